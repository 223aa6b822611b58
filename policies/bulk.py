"""The engine's bulk decisions: a run of messages decided per (subject, count, priority, role) group.

`Engine.forward_batch`, `Engine.decide_run` and `Engine.queue_run` are these functions, bound as the
engine's methods (no extra call on the per-run path): they read and update the engine's state as its
other methods do, and keep the same invariant at their boundary (policies/engine.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from policies.circuit_breaker import BreakerState
from policies.config import Priority
from policies.queue import QueuedRun, lane_of
from policies.roles import DATA, REPLY, Role
from policies.sampling import APART, PARKED, REFUSED, SHARE_ONE, kept_of, phase_of, share_of
from policies.verdicts import REASON_CIRCUIT_BREAKER, REASON_LOW_PRIORITY, REASON_SAMPLING

CLOSED: Final = BreakerState.CLOSED

if TYPE_CHECKING:
    from policies.engine import Engine

LOW: Final = Priority.LOW
MEDIUM: Final = Priority.MEDIUM
CRITICAL: Final = Priority.CRITICAL


class Written(NamedTuple):
    """A subject and role a bulk write carried (Accounting.record_batch reads these two)."""

    subject: str
    role: Role


def forwards_at_once(self: Engine, can_send: bool) -> bool:
    """Whether offer() would forward each non-critical message at once, given a rate token for it: the
    upstream takes writes, no batching, an empty queue, no breaker records, no shedding or sampling."""
    return not (
        not can_send
        or self._batch_size != 1
        or self._unheld_queued
        or self._breaker_records
        or self._shed_low
        or self._sampling_rate < 1.0
        or self._class_raise
    )


def forward_batch(
    self: Engine, groups: list[tuple[str, int, Priority, Role]], n: int, now: float, can_send: bool
) -> bool:
    """Forward `n` non-critical messages given as (subject, count, priority, role) at once.

    Only when offer() could have returned nothing but FORWARD for each of them: the upstream takes
    writes, no batching, an empty queue, no breaker records, no shedding or sampling, and `n` tokens.
    False: nothing was counted, offer them one by one.
    """
    if not forwards_at_once(self, can_send):
        return False
    bucket = self._bucket
    if bucket.refill(now) < n:
        return False
    bucket.take(n)
    offered = n
    for _, k, _, role in groups:
        if role >= REPLY:
            offered -= k  # replies and control messages are not part of the publish-rate signal
    self._meter.add_many(now, offered)
    self._acc.forward_many(groups, n)
    if self._track_traffic:
        for subject, k, _, role in groups:
            if role < REPLY:
                self._traffic.add_many(subject, k)
    if now >= self._next_check:
        self._check_level(now)
    return True


def decide_run(
    self: Engine, groups: list[tuple[str, int, Priority, Role]], now: float, can_send: bool
) -> list[tuple[int, int]] | None:
    """Decide a run of messages given as (subject, count, priority, role) groups in bulk, as offer()
    would decide them one by one, with one selection per group instead of one draw per message.

    Returns one (share, phase) per group (policies.sampling: kept_of, keeps): low messages shed at high
    and critical (share 0; REFUSED for requests: the shell answers each with a 503), sampled data (a
    share of the level's rate, the phase drawn from the rng), everything else kept (SHARE_ONE); a data
    group whose breaker is open is shed, and one whose breaker is half-open keeps its trials, a
    `halfOpenFraction` share (BreakerBoard.gate_group: what gate() passes, the rest counted
    circuit_breaker), then sampled or shed as any other; critical groups APART: kept too, but the shell
    writes each on its own (Nats-Msg-Id, confirmation), ahead of the others. The kept messages are
    counted forwarded: the shell writes them at once (and notes a half-open breaker's trials). None,
    with nothing counted, when the run needs the per-message path: the upstream does not take writes,
    messages are queued (they go first), a request's breaker is not closed, critical messages for an
    open breaker have no room beside the queue (with room, their group is PARKED: set apart, not
    counted, and the shell offers each, which parks it), the tokens do not cover the kept messages, or
    fewer are kept than one batch (offer() would queue them until a batch fills). A run that fills a
    batch is written whole, its last
    partial batch included, instead of waiting maxBatchDelayMs.
    """
    if not can_send or self._unheld_queued:
        return None
    records = self._breaker_records
    # Groups of a breaker's subject: their index -> the share its gate passes (0 open, else trials).
    gated: dict[int, int] = {}
    parking = 0
    prioritize = self._prioritize
    shed_low = self._shed_low
    share = share_of(self._sampling_rate)
    raised = self._class_raise
    rng = self._rng
    plan: list[tuple[int, int]] = []
    kept = finishing = 0
    for subject, count, priority, role in groups:
        p = priority if prioritize else MEDIUM
        if priority >= CRITICAL and self._hold_critical:
            return None  # queued (held) until PubAcks come back
        trial = SHARE_ONE
        if records and role < REPLY:
            breaker = records.get(subject)
            if breaker is not None and breaker.state is not CLOSED:
                if role is not DATA:
                    return None  # a request it sheds gets its 503 from the per-message path
                gate = self._breakers.gate_group(breaker, now, p >= CRITICAL)
                if gate is None:
                    # Critical messages for an open breaker: the shell offers each (offer() parks it),
                    # when there is room for all of them beside the queue (else, one by one).
                    parking += count
                    if self._queue.size + self._parked_count + parking > self._capacity:
                        return None
                    plan.append((PARKED, 0))
                    continue
                if gate < SHARE_ONE:
                    gated[len(plan)] = gate
                    if gate == 0:
                        plan.append((0, 0))
                        continue
                    trial = gate
        if p >= CRITICAL:
            plan.append((APART, 0))
            if role >= REPLY:
                finishing += count
            else:
                kept += count
        elif role >= REPLY:
            plan.append((SHARE_ONE, 0))
            finishing += count
        else:
            group_shed, group_share = shed_low, share
            if raised and priority in raised:
                # A class whose stream fill raises its level above the sidecar's (_offer_raised).
                group_shed, rate = raised[priority]
                group_share = share_of(rate)
            if group_shed and p <= LOW:
                if role is not DATA:
                    plan.append((REFUSED, 0))  # shed; the shell answers each request with its 503
                    continue
                plan.append((0, 0) if trial == SHARE_ONE else (0, phase_of(rng)))
                continue
            if group_share < SHARE_ONE and p <= MEDIUM and role is DATA:
                group_share = group_share * trial >> 32  # trial is SHARE_ONE without a breaker
            else:
                group_share = trial
            if group_share < SHARE_ONE:
                phase = phase_of(rng)
                plan.append((group_share, phase))
                kept += kept_of(count, group_share, phase)
            else:
                plan.append((SHARE_ONE, 0))
                kept += count
    bucket = self._bucket
    if (kept and kept < self._batch_size) or bucket.refill(now) < kept:
        return None
    bucket.take(kept)
    for _ in range(finishing):
        bucket.spend(now)
    acc = self._acc
    forwarded: list[tuple[str, int, Priority, Role]] = []
    written: list[Written] = []
    offered = 0
    track = self._track_traffic
    for i, ((subject, count, priority, role), (group_share, phase)) in enumerate(
        zip(groups, plan, strict=True)
    ):
        if group_share == PARKED:
            continue  # offered one by one, counted there
        if role < REPLY:
            offered += count
            if track and priority < CRITICAL:
                self._traffic.add_many(subject, count)
        k = (
            count
            if group_share == APART
            else 0
            if group_share == REFUSED
            else kept_of(count, group_share, phase)
        )
        if k:
            forwarded.append((subject, k, priority, role))
            written.append(Written(subject, role))
        if k < count:
            shed = count - k
            gate = gated.get(i)
            if gate is not None:
                # What the breaker's gate drops first (all when open), then the rest shed the usual way.
                passed = kept_of(count, gate, phase)
                acc.drop_many(subject, priority, REASON_CIRCUIT_BREAKER, role, count - passed)
                shed = passed - k
            if shed:
                reason = REASON_LOW_PRIORITY if group_share <= 0 else REASON_SAMPLING
                acc.drop_many(subject, priority, reason, role, shed)
                if reason == REASON_SAMPLING:
                    acc.sampled += shed
    self._meter.add_many(now, offered)
    total = sum(k for _, k, _, _ in forwarded)
    if total:
        acc.forward_many(forwarded, total)
        acc.record_batch(written, total)
    if now >= self._next_check:
        self._check_level(now)
    return plan


def queue_run(
    self: Engine,
    groups: list[tuple[str, int, Priority, Role]],
    now: float,
    can_send: bool,
    build: Callable[[list[int], bytearray | None], list[tuple[int, QueuedRun]]],
    order: Sequence[int] | None = None,
) -> bool:
    """Queue a run of data messages given as (subject, count, priority, role) groups in bulk, with the
    counts offer() one by one would give: each received, low ones shed at high and critical, low and
    medium ones sampled, the others queued in their lanes. `order`: the group of each message, in run
    order; while sampling, the messages of sampled groups get one `rng.random()` draw each, in that order,
    as offer() draws them. `build(lanes, keep)` gets the lane of each group (0: shed) and, when sampling,
    whether each message is kept (None: all of the lanes' messages are), and returns the run's QueuedRuns,
    (lane, run) each, the kept messages of each lane in run order, none empty; they are pushed as they are.

    Only when offer() would have queued every kept message without a decision of its own: data only (no
    requests, replies, control or critical messages), no breaker that is not closed, no raised class, no
    level check due, not the first message going at once (a rate token for it, with nothing queued and no
    batching: the rate ceiling queues the others), and room for all of them (sampling aside) below
    both the queue limit and the length that re-evaluates the level; sampling needs `order`. False:
    nothing was counted and nothing drawn, offer them one by one.
    """
    if self._class_raise or now >= self._next_check:
        return False
    records = self._breaker_records
    prioritize = self._prioritize
    shed_low = self._shed_low
    rate = self._sampling_rate
    sampling = rate < 1.0
    lanes: list[int] = []
    sampled: list[bool] = []
    kept = 0
    for subject, count, priority, role in groups:
        if role is not DATA or priority >= CRITICAL:
            return False
        if records:
            breaker = records.get(subject)
            if breaker is not None and breaker.state is not CLOSED:
                return False  # its gate decides each message
        p = priority if prioritize else MEDIUM
        if shed_low and p <= LOW:
            lanes.append(0)
            sampled.append(False)
            continue
        draws = sampling and p <= MEDIUM
        if draws and order is None:
            return False
        lanes.append(lane_of(p, DATA))
        sampled.append(draws)
        kept += count
    queue = self._queue
    if not kept or (can_send and self._batch_size == 1 and not queue.size and self._bucket.refill(now) >= 1):
        return False  # the first message would go at once (offer(): _goes_now)
    held = queue.size + self._parked_count + kept
    if held > self._capacity or held >= self._escalate_queue_at:
        return False
    keep: bytearray | None = None
    out = [0] * len(groups)
    if any(sampled):
        assert order is not None
        draw = self._rng.random
        keep = bytearray(len(order))
        for i, g in enumerate(order):
            if sampled[g] and draw() >= rate:
                out[g] += 1
            else:
                keep[i] = 1
    acc = self._acc
    track = self._track_traffic
    offered = 0
    for (subject, count, priority, role), lane, k in zip(groups, lanes, out, strict=True):
        offered += count
        if track:
            self._traffic.add_many(subject, count)
        if not lane:
            acc.drop_many(subject, priority, REASON_LOW_PRIORITY, role, count)
            continue
        if k:
            acc.drop_many(subject, priority, REASON_SAMPLING, role, k)
            acc.sampled += k
            kept -= k
        if count > k:
            acc.receive_many(priority, role, count - k)
    self._meter.add_many(now, offered)
    before = queue.size
    if kept:
        for lane, run in build(lanes, keep):
            queue.push_run(run, lane, now)
    assert queue.size == before + kept, "the runs built hold the kept messages"
    return True
