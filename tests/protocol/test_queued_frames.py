"""scan_run and queued_runs: a run of data queued in bulk keeps, per lane, exactly the frames the
per-message path would have queued there (those sampling kept), in order, each made into the OutMsg it
would have built."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies.config import Priority
from policies.roles import DATA
from proxy.nats import speedups
from proxy.nats.protocol import ClientParser, Pub, encode_pub, header_value
from proxy.pipeline.queued_runs import queued_runs, scan_run, scan_run_py
from proxy.pipeline.runs import run_groups
from tests.protocol.test_select import run_of

frames_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b.c", "café"]),
        st.sampled_from([None, b"", b"KPI-Priority: low\r\n", b"kpi-priority: HIGH\r\n", b"X: 1\r\n"]),
        st.binary(max_size=20),
    ),
    min_size=1,
    max_size=60,
)


def classify(subject: str, header: str | None, cache: bool) -> tuple[Priority, None]:
    if header is not None:
        return Priority[header.strip().upper()], None
    return (Priority.HIGH if subject == "a" else Priority.MEDIUM), None


@given(
    parts=frames_st,
    lane_of=st.lists(st.integers(0, 3), min_size=5, max_size=5),
    sample=st.booleans(),
    keep_of=st.lists(st.integers(0, 1), min_size=1, max_size=7),
)
def test_queued_runs_hold_each_lanes_messages_as_the_per_message_path_builds_them(
    parts: list, lane_of: list[int], sample: bool, keep_of: list[int]
) -> None:
    frames = b"".join(
        encode_pub(s, None, payload, None if block is None else b"NATS/1.0\r\n" + block + b"\r\n")
        for s, block, payload in parts
    )
    op = run_of(frames)
    found = run_groups(op, classify, None, 0.0)
    assert all(group[3] is DATA for group in found.groups)
    scanned = scan_run(op.frames, found, 1 << 20)
    assert scanned is not None
    # A lane per priority, as the engine gives them (0: shed); two groups may share a lane.
    lanes = [lane_of[priority] for _, _, priority, _ in found.groups]
    keep = bytearray(keep_of[i % len(keep_of)] for i in range(op.n)) if sample else None
    runs = queued_runs(op.frames, scanned, found, lanes, keep, "client", 5.0)
    # The per-message path: each publish parsed, classified, and its group's lane.
    expected: dict[int, list[tuple]] = {}
    parser = ClientParser(max_payload=-1)
    parser.headers = True
    for i, msg in enumerate(parser.feed_data(op.frames)):
        assert type(msg) is Pub
        if keep is not None and not keep[i]:
            continue
        header = header_value(msg.headers, "KPI-Priority") if msg.hdr_size > 0 else None
        priority, _ = classify(msg.subject, header, True)
        if lane_of[priority]:
            expected.setdefault(lane_of[priority], []).append((msg.subject, priority, msg.size, msg.frame))
    assert [lane for lane, _ in runs] == sorted(expected)
    for lane, run in runs:
        assert run.nbytes == sum(size for _, _, size, _ in expected[lane])
        made = run.items()
        assert [(m.subject, m.priority, m.size, m.frame) for m in made] == expected[lane]
        assert all(m.client == "client" and m.received_at == 5.0 and m.reply is None for m in made)


def test_a_message_over_max_payload_or_with_a_reply_is_left_to_the_per_message_path() -> None:
    op = run_of(encode_pub("a", None, b"x" * 10) + encode_pub("b", None, b"y" * 100))
    found = run_groups(op, classify, None, 0.0)
    assert scan_run(op.frames, found, 100) is not None
    assert scan_run(op.frames, found, 99) is None


@given(
    parts=st.lists(
        st.tuples(
            st.sampled_from(["a", "b.c", "café", "d"]),
            st.sampled_from([None, None, "inbox.1"]),
            st.sampled_from([None, b"", b"KPI-Priority: low\r\n", b"KPI-Priority: x\r\n", b"X: 1\r\n"]),
            st.binary(max_size=30),
        ),
        min_size=1,
        max_size=80,
    ),
    max_payload=st.sampled_from([20, 1 << 20]),
    drop_group=st.booleans(),
)
def test_the_c_scan_of_a_run_is_the_python_one(parts: list, max_payload: int, drop_group: bool) -> None:
    # scan_groups (C) and scan_run_py: the same starts, sizes and groups, or both decline (a request,
    # a size over max_payload, a frame whose key has no group).
    frames = b"".join(
        encode_pub(subject, reply, payload, None if block is None else b"NATS/1.0\r\n" + block + b"\r\n")
        for subject, reply, block, payload in parts
    )
    found = run_groups(run_of(frames), classify, None, 0.0)
    if drop_group and len(found.keys) > 1:
        found.keys[0] = ()  # (a key with no group: both decline)
    want = scan_run_py(frames, found, max_payload)
    got = scan_run(frames, found, max_payload)
    assert got == want
    if speedups.scan_groups is not None and want is not None:
        assert [a.typecode for a in got] == ["I", "I", "H"]  # type: ignore[union-attr]
