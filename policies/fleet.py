"""Fleet coordination, the pure part: members seen in the KV bucket, liveness, the global rate budget.

Every sidecar of a service writes its own record to a JetStream KV bucket and reads the others'
(proxy/fleet/ does the I/O). From the records seen, each computes the same shares of
`fleet.maxPublishRate` and applies its own as its rate ceiling. Liveness is local: a member is live while
the last record received from it is younger than `ttlS` (the receiver's clock, so clock skew between pods
does not matter). When the KV cannot be reached, the last share is kept for `holdS`, then the sidecar falls
back to its local `backpressure.maxPublishRate`, never to unlimited (docs/fleet.md).
"""

from __future__ import annotations

import enum
import math
from typing import Annotated

import msgspec
from msgspec import Meta

from policies.config import Base

# Members remembered at most; records of further ids are ignored (counted) until some expire.
MAX_MEMBERS = 1024
# Longest member id and key component (JetStream KV keys: [-/_=.a-zA-Z0-9]+).
MAX_ID_LENGTH = 128


class ShareMode(enum.Enum):
    """How the fleet budget is split: equally, or by each member's recent offered rate with a floor."""

    EQUAL = "equal"
    DEMAND = "demand"


class FleetMode(enum.Enum):
    """Where the rate ceiling comes from right now."""

    OFF = "off"  # no fleet.maxPublishRate: membership and the fleet view only
    JOINING = "joining"  # the KV has not answered yet: the local maxPublishRate applies
    SHARED = "shared"  # the KV answers: the ceiling is this member's share
    HOLD = "hold"  # the KV stopped answering: the last share is kept for holdS
    LOCAL = "local"  # the KV has been away longer than holdS: the local maxPublishRate applies


KeyPart = Annotated[str, Meta(min_length=1, max_length=64)]


class FleetConfig(Base, frozen=True):
    """`fleet:`: membership in a JetStream KV bucket and an optional rate budget shared by the members."""

    name: KeyPart
    bucket: KeyPart = "kpi_fleet"
    # This member's key in the bucket; default: the pod (or host) name and the process id.
    member_id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)] | None = None
    # The whole fleet's publish rate (msg/s), shared among live members; null: no budget, view only.
    max_publish_rate: Annotated[float, Meta(gt=0, le=100_000_000)] | None = None
    interval_s: Annotated[float, Meta(ge=0.1, le=60)] = 2.0
    ttl_s: Annotated[float, Meta(ge=0.5, le=600)] = 6.0
    share_mode: ShareMode = ShareMode.EQUAL
    # demand mode: every live member gets at least this fraction of an equal share.
    min_share: Annotated[float, Meta(ge=0, le=1)] = 0.2
    # KV unavailable: keep the last share this long, then fall back to backpressure.maxPublishRate.
    hold_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0

    def __post_init__(self) -> None:
        if self.ttl_s <= self.interval_s:
            raise ValueError(
                f"ttlS ({self.ttl_s:g}) must be longer than intervalS ({self.interval_s:g}): a member "
                "that writes every intervalS would otherwise expire between two writes (use 3x)"
            )
        for field, value in (("name", self.name), ("bucket", self.bucket), ("memberId", self.member_id)):
            if value is not None and not valid_key(value):
                raise ValueError(
                    f"{field} {value!r}: a KV bucket or key part takes letters, digits and - _ = only "
                    "(no dots or spaces: dots separate the parts of a key)"
                )


def valid_key(text: str) -> bool:
    """Whether `text` is usable as one token of a KV key."""
    return 0 < len(text) <= MAX_ID_LENGTH and all(c.isascii() and (c.isalnum() or c in "-_=") for c in text)


def key_token(text: str) -> str:
    """`text` made into a KV key token: other characters become `-` (a pod name passes unchanged)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_=") else "-" for c in text)
    return cleaned[:MAX_ID_LENGTH] or "member"


Text = Annotated[str, Meta(max_length=256)]
Rate = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]


class MemberRecord(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What a sidecar writes to the bucket every intervalS (JSON, about 270 bytes). Records of others are
    untrusted input: bounded strings, non-negative numbers, or the record is ignored."""

    id: Annotated[str, Meta(max_length=MAX_ID_LENGTH)]
    host: Text
    level: Annotated[str, Meta(max_length=16)]
    level_value: Annotated[int, Meta(ge=0, le=4)]
    load_percent: float
    dominant_signal: Annotated[str, Meta(max_length=32)]
    offered_rate: Rate
    forwarded_rate: Rate
    queue: Count
    spool: Count
    version: Annotated[str, Meta(max_length=64)]
    # The writer's wall clock (epoch seconds): shown, never used for liveness.
    time: float
    # The share the writer applies now (msg/s), None without a budget.
    share: Rate | None = None
    mode: Annotated[str, Meta(max_length=16)] = FleetMode.OFF.value


class Member(msgspec.Struct, kw_only=True):
    """A member as this sidecar sees it: its last record and when it arrived (local monotonic time)."""

    record: MemberRecord
    last_seen: float
    own: bool = False


class FleetLevels(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The fleet-wide degradation level over live members: the worst one and the median."""

    max: int
    median: int


class FleetDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What the fleet says about this member's rate ceiling at `now`."""

    mode: FleetMode
    # The rate ceiling to apply; None: the engine's own backpressure.maxPublishRate.
    ceiling: float | None
    shares: dict[str, float]


def compute_shares(
    budget: float, offered: dict[str, float], mode: ShareMode, min_share: float
) -> dict[str, float]:
    """Split `budget` among the members (id -> recent offered rate); the shares sum to `budget`.

    Equal: budget / n each. Demand: each member gets `min_share` of an equal share, and the rest of the
    budget in proportion to its offered rate (equally when nobody offers anything).
    """
    n = len(offered)
    if n == 0:
        return {}
    equal = budget / n
    if mode is ShareMode.EQUAL:
        return dict.fromkeys(offered, equal)
    demand = {member: max(0.0, rate) if math.isfinite(rate) else 0.0 for member, rate in offered.items()}
    total = sum(demand.values())
    if total <= 0.0:
        return dict.fromkeys(offered, equal)
    floor = min_share * equal
    rest = budget - floor * n
    # rate / total first: rest * rate underflows for tiny (subnormal) rates, and the sum drifts.
    return {member: floor + rest * (rate / total) for member, rate in demand.items()}


class FleetState:
    """The members this sidecar knows, the KV's health, and the share it should apply: pure, fake-clock."""

    def __init__(self, own_id: str, config: FleetConfig, now: float) -> None:
        self.own_id = own_id
        self.config = config
        self.members: dict[str, Member] = {}
        self.ignored: dict[str, int] = {"invalid": 0, "over_limit": 0}
        self.expired = 0
        # KV health: the last successful exchange (a put acknowledged), the first failure since then.
        self.kv_ok_at: float | None = None
        self.kv_failed_at: float | None = None
        self.kv_error: str | None = None
        self.last_share: float | None = None
        self._started = now

    # -- input -------------------------------------------------------------------------------------------
    def configure(self, config: FleetConfig) -> None:
        """A reloaded configuration (name and bucket unchanged: those need a restart)."""
        self.config = config

    def observe(self, record: MemberRecord, now: float, age: float = 0.0) -> bool:
        """A record read from the bucket, `age` seconds old when it arrived (a snapshot of the bucket
        returns records written before this member joined). False: ignored (counted in `ignored`)."""
        if not valid_key(record.id):
            self.ignored["invalid"] += 1
            return False
        seen = now - max(0.0, age)
        if now - seen > self.config.ttl_s:
            return False  # already dead when read
        member = self.members.get(record.id)
        if member is None:
            if len(self.members) >= MAX_MEMBERS:
                self.expire(now)
                if len(self.members) >= MAX_MEMBERS:
                    self.ignored["over_limit"] += 1
                    return False
            self.members[record.id] = Member(record=record, last_seen=seen, own=record.id == self.own_id)
            return True
        if seen >= member.last_seen:
            member.record = record
            member.last_seen = seen
        return True

    def update_own(self, record: MemberRecord, now: float) -> None:
        """This member's own state (it is always live to itself, whatever the KV says)."""
        member = self.members.get(self.own_id)
        if member is None:
            self.members[self.own_id] = Member(record=record, last_seen=now, own=True)
        else:
            member.record = record
            member.last_seen = now

    def forget(self, member_id: str) -> None:
        """The member deleted its key (a graceful shutdown): out at once."""
        if member_id != self.own_id:
            self.members.pop(member_id, None)

    def kv_ok(self, now: float) -> None:
        """A put was acknowledged by JetStream."""
        self.kv_ok_at = now
        self.kv_failed_at = None
        self.kv_error = None

    def kv_failed(self, now: float, error: str) -> None:
        """A put failed (no JetStream, an error, no answer in time) or could not be written (no upstream)."""
        if self.kv_failed_at is None:
            self.kv_failed_at = now
        self.kv_error = error

    # -- state ------------------------------------------------------------------------------------------
    @property
    def kv_available(self) -> bool:
        return self.kv_ok_at is not None and self.kv_failed_at is None

    def expire(self, now: float) -> list[str]:
        """Forget members not heard from for ttlS; the ids dropped."""
        ttl = self.config.ttl_s
        dead = [
            member_id
            for member_id, member in self.members.items()
            if not member.own and now - member.last_seen > ttl
        ]
        for member_id in dead:
            del self.members[member_id]
        self.expired += len(dead)
        return dead

    def live(self, now: float) -> list[Member]:
        """Live members, this one included, sorted by id."""
        ttl = self.config.ttl_s
        out = [m for m in self.members.values() if m.own or now - m.last_seen <= ttl]
        return sorted(out, key=lambda m: m.record.id)

    def shares(self, now: float) -> dict[str, float]:
        """Each live member's share of the budget (empty without a budget)."""
        budget = self.config.max_publish_rate
        if budget is None:
            return {}
        offered = {m.record.id: m.record.offered_rate for m in self.live(now)}
        offered.setdefault(self.own_id, 0.0)
        return compute_shares(budget, offered, self.config.share_mode, self.config.min_share)

    def decide(self, now: float) -> FleetDecision:
        """The ceiling to apply now, and where it comes from."""
        config = self.config
        if config.max_publish_rate is None:
            return FleetDecision(mode=FleetMode.OFF, ceiling=None, shares={})
        if self.kv_available:
            shares = self.shares(now)
            share = shares[self.own_id]
            self.last_share = share
            return FleetDecision(mode=FleetMode.SHARED, ceiling=share, shares=shares)
        if self.kv_ok_at is None:
            return FleetDecision(mode=FleetMode.JOINING, ceiling=None, shares={})
        failed_at = self.kv_failed_at if self.kv_failed_at is not None else now
        if self.last_share is not None and now - failed_at < config.hold_s:
            return FleetDecision(mode=FleetMode.HOLD, ceiling=self.last_share, shares={})
        return FleetDecision(mode=FleetMode.LOCAL, ceiling=None, shares={})

    def hold_remaining(self, now: float) -> float | None:
        """Seconds left of the hold on the last share (None unless holding)."""
        if self.kv_failed_at is None or self.last_share is None:
            return None
        return max(0.0, self.config.hold_s - (now - self.kv_failed_at))

    def levels(self, now: float) -> FleetLevels:
        """The worst and the median degradation level of the live members."""
        values = sorted(m.record.level_value for m in self.live(now))
        if not values:
            return FleetLevels(max=0, median=0)
        return FleetLevels(max=values[-1], median=values[(len(values) - 1) // 2])
