"""Fleet membership and the shared rate budget (policies/fleet.py): pure, fake clock."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from policies.fleet import (
    MAX_MEMBERS,
    FleetConfig,
    FleetMode,
    FleetState,
    MemberRecord,
    ShareMode,
    compute_shares,
    key_token,
)
from tests.policies.fakes import Clock, Msg, make_engine


def record(member_id: str, *, offered: float = 0.0, level: int = 0) -> MemberRecord:
    return MemberRecord(
        id=member_id,
        host="pod",
        level=["none", "low", "medium", "high", "critical"][level],
        level_value=level,
        load_percent=0.0,
        dominant_signal="publish_rate",
        offered_rate=offered,
        forwarded_rate=0.0,
        queue=0,
        spool=0,
        version="test",
        time=0.0,
    )


def fleet(**overrides: object) -> FleetState:
    config = FleetConfig(name="svc", max_publish_rate=900.0, **overrides)  # type: ignore[arg-type]
    state = FleetState("a", config, now=0.0)
    state.update_own(record("a"), 0.0)
    return state


def test_equal_shares_converge_to_a_third_each() -> None:
    state = fleet()
    state.kv_ok(0.0)
    state.observe(record("b"), 0.5)
    state.observe(record("c"), 0.6)
    decision = state.decide(1.0)
    assert decision.mode is FleetMode.SHARED
    assert decision.ceiling == pytest.approx(300.0)
    assert decision.shares == pytest.approx({"a": 300.0, "b": 300.0, "c": 300.0})


def test_a_member_that_stops_reporting_drops_out_after_the_ttl_and_shares_grow() -> None:
    state = fleet(ttl_s=6.0)
    state.kv_ok(0.0)
    state.observe(record("b"), 0.0)
    state.observe(record("c"), 0.0)
    for t in (2.0, 4.0, 6.0, 8.0):  # b keeps writing, c was killed at 0
        state.observe(record("b"), t)
        state.kv_ok(t)
    assert state.decide(6.0).ceiling == pytest.approx(300.0)  # c still within its TTL
    assert state.decide(6.1).ceiling == pytest.approx(450.0)
    assert state.expire(6.1) == ["c"]
    assert [m.record.id for m in state.live(8.0)] == ["a", "b"]


def test_a_deleted_key_leaves_at_once_but_never_this_member() -> None:
    state = fleet()
    state.kv_ok(0.0)
    state.observe(record("b"), 0.0)
    state.forget("b")
    state.forget("a")
    assert state.decide(0.1).ceiling == pytest.approx(900.0)


def test_snapshot_records_keep_their_age() -> None:
    state = fleet(ttl_s=6.0)
    state.kv_ok(10.0)
    state.observe(record("b"), 10.0, age=5.0)  # written 5 s before this member read it
    state.observe(record("old"), 10.0, age=7.0)  # already expired
    assert [m.record.id for m in state.live(10.0)] == ["a", "b"]
    assert [m.record.id for m in state.live(11.5)] == ["a"]


def test_an_older_record_never_replaces_a_newer_one() -> None:
    state = fleet()
    state.observe(record("b", offered=10), 5.0)
    state.observe(record("b", offered=99), 5.0, age=3.0)
    assert state.members["b"].record.offered_rate == 10
    assert state.members["b"].last_seen == 5.0


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        # floor = 0.2 * 300 = 60 each; the other 720 split 2:1:0
        ({"a": 200.0, "b": 100.0, "c": 0.0}, {"a": 540.0, "b": 300.0, "c": 60.0}),
        # nobody offers anything: equal
        ({"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 300.0, "b": 300.0, "c": 300.0}),
        ({"a": 5.0}, {"a": 900.0}),
    ],
)
def test_demand_shares_follow_offered_rate_with_a_floor(
    offered: dict[str, float], expected: dict[str, float]
) -> None:
    assert compute_shares(900.0, offered, ShareMode.DEMAND, 0.2) == pytest.approx(expected)


def test_demand_mode_in_the_state_uses_each_records_offered_rate() -> None:
    state = fleet(share_mode=ShareMode.DEMAND, min_share=0.5)
    state.update_own(record("a", offered=300), 0.0)
    state.observe(record("b", offered=100), 0.0)
    state.kv_ok(0.0)
    # floor 0.5 * 450 = 225 each, the other 450 split 3:1
    assert state.decide(0.0).shares == pytest.approx({"a": 562.5, "b": 337.5})


@given(
    st.dictionaries(
        st.text("abc", min_size=1, max_size=3),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(list(ShareMode)),
    st.floats(min_value=0, max_value=1),
)
@example({"a": 5e-324}, ShareMode.DEMAND, 0.3125)  # a subnormal rate: 1000.5 before the fix
def test_shares_always_sum_to_the_budget_and_respect_the_floor(
    offered: dict[str, float], mode: ShareMode, min_share: float
) -> None:
    shares = compute_shares(1000.0, offered, mode, min_share)
    assert sum(shares.values()) == pytest.approx(1000.0)
    floor = (min_share if mode is ShareMode.DEMAND else 1.0) * 1000.0 / len(offered)
    assert all(share >= floor - 1e-6 for share in shares.values())


def test_kv_unavailable_holds_the_last_share_then_falls_back_to_the_local_rate() -> None:
    state = fleet(hold_s=30.0)
    state.kv_ok(0.0)
    state.observe(record("b"), 0.0)
    state.observe(record("c"), 0.0)
    assert state.decide(0.0).ceiling == pytest.approx(300.0)
    state.kv_failed(1.0, "no responders: JetStream is not enabled")
    state.kv_failed(3.0, "no responders: JetStream is not enabled")  # the first failure starts the hold
    held = state.decide(30.9)
    assert (held.mode, held.ceiling) == (FleetMode.HOLD, pytest.approx(300.0))
    assert state.hold_remaining(30.9) == pytest.approx(0.1)
    fallback = state.decide(31.0)
    assert (fallback.mode, fallback.ceiling) == (FleetMode.LOCAL, None)  # None: maxPublishRate, not unlimited
    state.kv_ok(40.0)
    assert state.decide(40.0).mode is FleetMode.SHARED


def test_joining_uses_the_local_rate_until_the_kv_answers() -> None:
    state = fleet()
    assert state.decide(0.0).mode is FleetMode.JOINING
    state.kv_failed(0.5, "timeout")
    assert (state.decide(1.0).mode, state.decide(1.0).ceiling) == (FleetMode.JOINING, None)


def test_without_a_budget_the_fleet_is_a_view_only() -> None:
    state = FleetState("a", FleetConfig(name="svc"), now=0.0)
    state.kv_ok(0.0)
    assert state.decide(0.0).mode is FleetMode.OFF
    assert state.decide(0.0).ceiling is None


def test_fleet_levels_are_the_worst_and_the_median() -> None:
    state = fleet()
    state.update_own(record("a", level=1), 0.0)
    state.observe(record("b", level=4), 0.0)
    state.observe(record("c", level=0), 0.0)
    levels = state.levels(0.0)
    assert (levels.max, levels.median) == (4, 1)


def test_members_are_bounded_and_the_rest_is_counted() -> None:
    state = fleet(ttl_s=6.0)
    for i in range(MAX_MEMBERS + 10):
        state.observe(record(f"m{i}"), 0.0)
    assert len(state.members) == MAX_MEMBERS
    assert state.ignored["over_limit"] == 11  # "a" took one place
    # Once some expire, new ones fit again.
    assert state.observe(record("late"), 7.0)
    assert state.expired == MAX_MEMBERS - 1


def test_invalid_ids_are_ignored() -> None:
    state = fleet()
    assert not state.observe(record("a.b c"), 0.0)
    assert state.ignored["invalid"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("host", "h" * 1000), ("offeredRate", -1.0), ("levelValue", 9), ("queue", -5)],
)
def test_records_of_others_are_bounded(field: str, value: object) -> None:
    data = msgspec.to_builtins(record("b")) | {field: value}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(data), type=MemberRecord)


def test_key_tokens() -> None:
    assert key_token("web-7d9f-abc") == "web-7d9f-abc"
    assert key_token("host.example.com") == "host-example-com"
    assert key_token("") == "member"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "svc", "ttlS": 2, "intervalS": 2}, "must be longer than intervalS"),
        ({"name": "a.b"}, "no dots"),
        ({"name": "svc", "memberId": "x y"}, "memberId .x y.: a KV"),
        ({"name": "svc", "shareMode": "fair"}, "enum"),
        ({"name": "svc", "maxPublishRate": 0}, ">"),
        ({}, "name"),
    ],
)
def test_config_errors_are_clear(data: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(data, FleetConfig)


# -- the engine's rate ceiling ----------------------------------------------------------------------------
def test_the_share_becomes_the_engines_rate_ceiling() -> None:
    engine = make_engine(
        Clock(0.0), max_publish_rate=1000, rate_burst_seconds=1, enable_batching=False, max_queue_size=10_000
    )
    engine.set_rate_ceiling(100.0, 0.0)
    assert engine.rate_ceiling == 100.0
    forwarded = 0
    for i in range(10_000):  # 1000 msg/s offered for 10 s
        now = i / 1000
        decision = engine.offer(Msg(), now, True)
        forwarded += decision.verdict == 0
        forwarded += len(engine.take(now))
    # 100/s for 10 s plus one burst of 100 (the bucket starts full at the old burst, capped to the new)
    assert 1000 <= forwarded <= 1100 + 1
    engine.set_rate_ceiling(None, 10.0)
    assert engine.rate_ceiling == 1000


def test_the_publish_rate_signal_is_measured_against_the_ceiling_in_force() -> None:
    engine = make_engine(Clock(0.0), max_publish_rate=1000, enable_batching=False, max_queue_size=10_000)
    engine.set_rate_ceiling(100.0, 0.0)
    for i in range(200):
        engine.offer(Msg(), i / 200, True)
    engine.tick(1.0)
    assert engine.snapshot(1.0).publish_rate_ratio == pytest.approx(2.0, rel=0.2)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_ceiling_is_refused(bad: float) -> None:
    engine = make_engine(Clock(0.0))
    with pytest.raises(ValueError, match="positive"):
        engine.set_rate_ceiling(bad, 0.0)
