"""The backpressure engine: one synchronous object the shell feeds with messages, signals and time.

CONTRACT (the asyncio shell in proxy/ calls exactly this; keep signatures stable):

    engine = Engine(config, rules, rng=random.Random(), now=loop.time(), max_subjects=500)
    prio, rule = engine.classify(subject, header_priority)   # header_priority: raw KPI-Priority value or None
    decision = engine.offer(item, now, can_send)              # item: any object with the Item attributes
    items = engine.take(now)                                  # what may be written upstream now
    engine.next_deadline()                                    # float | None: call take() again at that time
    transition = engine.tick(now, memory_mb=..., cpu_percent=...)   # once a second (and on demand)
    for t in engine.pop_transitions(): log(t)                 # level changes, also those between ticks
    engine.observe_rtt(now, seconds, "ping" | "puback")       # each PONG / PubAck (docs/signals.md)
    engine.observe_in_flight(seconds); engine.observe_stream(reading)   # oldest PING's age; STREAM.INFO
    for c in engine.pop_class_transitions(): log(c)           # a priority class's stream-fill level changes

Each item carries its protocol role (policies.roles): replies and control messages are never sampled,
shed or broken and go ahead of queued data; only data is sampled.

Every public call keeps `received == forwarded + dropped + queue_size + spooled`. The semantics of each
level, switch and counter are written down in docs/backpressure.md.

Size: one class on purpose. Every call reads and updates the same accounting, queue, breakers and level,
and the invariant above holds at its boundary; the policies it composes each live in their own module
(levels, rate, queue, circuit_breaker, sampling, batching, roles, accounting, signal_board). Its bulk
decisions (policies/bulk.py), its load, level and signal calls (policies/load.py), the outcomes the shell
reports (policies/settlement.py) and its readings (policies/snapshot.py) are functions of its state in
their own modules, bound here as its methods: no extra call, the same attribute lookups as a method's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from policies import bulk, load, settlement
from policies import snapshot as engine_snapshot
from policies.accounting import DEFAULT_MAX_SUBJECTS, Accounting
from policies.batching import release_count
from policies.circuit_breaker import DEFAULT_MAX_TRACKED as DEFAULT_MAX_BREAKERS
from policies.circuit_breaker import DROP as GATE_DROP
from policies.circuit_breaker import BreakerBoard, BreakerChange, BreakerSnapshot, BreakerState
from policies.config import BackpressureConfig, Level, PolicyRule, Priority
from policies.levels import HISTORY_SIZE, LevelTracker, Transition
from policies.load import SIGNALS
from policies.queue import CRITICAL_LANE, FINISH_LANE, LANES, PriorityQueue, RunSlice, lane_of
from policies.rate import RateMeter, TokenBucket
from policies.roles import DATA, REPLY, Role, subject_role
from policies.signal_board import SignalBoard
from policies.snapshot import EngineSnapshot
from policies.subjects import DEFAULT_CACHE_SIZE, SubjectClassifier
from policies.traffic import DEFAULT_MAX_TRACKED as DEFAULT_MAX_TRAFFIC_SUBJECTS
from policies.traffic import SubjectTraffic
from policies.verdicts import (
    CRITICAL_DROP_REASONS,
    REASON_CIRCUIT_BREAKER,
    REASON_CLEARED,
    REASON_LOW_PRIORITY,
    REASON_PERMISSIONS,
    REASON_QUEUE_FULL,
    REASON_SAMPLING,
    REASON_SHUTDOWN,
    REASON_UPSTREAM_LOST,
    Decision,
    Item,
    Verdict,
)

if TYPE_CHECKING:
    import random


# Re-exported: the shell and the tests import these from here.
__all__ = [
    "CRITICAL_DROP_REASONS",
    "REASON_CIRCUIT_BREAKER",
    "REASON_CLEARED",
    "REASON_LOW_PRIORITY",
    "REASON_PERMISSIONS",
    "REASON_QUEUE_FULL",
    "REASON_SAMPLING",
    "REASON_SHUTDOWN",
    "REASON_UPSTREAM_LOST",
    "SIGNALS",
    "Decision",
    "Engine",
    "EngineSnapshot",
    "Item",
    "Verdict",
]

LOW: Final = Priority.LOW
MEDIUM: Final = Priority.MEDIUM
CRITICAL: Final = Priority.CRITICAL
PENDING_TRANSITIONS = 100
# KPI-Priority header values, exact spellings first so the common case skips lower().
_HEADER_PRIORITIES: dict[str, Priority] = {}
for _p in Priority:
    for _spelling in (_p.label, _p.label.upper(), _p.label.capitalize()):
        _HEADER_PRIORITIES[_spelling] = _p


_FORWARD = Decision(Verdict.FORWARD)
_QUEUE = Decision(Verdict.QUEUE)
_BLOCK = Decision(Verdict.BLOCK)
_DROP_SAMPLING = Decision(Verdict.DROP, REASON_SAMPLING)
_DROP_LOW_PRIORITY = Decision(Verdict.DROP, REASON_LOW_PRIORITY)
_DROP_QUEUE_FULL = Decision(Verdict.DROP, REASON_QUEUE_FULL)
_DROP_CIRCUIT_BREAKER = Decision(Verdict.DROP, REASON_CIRCUIT_BREAKER)


class Engine:
    """The backpressure decision core: classify, offer, take, tick; pure, synchronous, deterministic."""

    __slots__ = (
        "_acc",
        "_batch_delay_s",
        "_batch_size",
        "_breaker_records",
        "_breakers",
        "_bucket",
        "_cache_size",
        "_capacity",
        "_ceiling",
        "_class_raise",
        "_classifier",
        "_config",
        "_cpu_percent",
        "_cpu_quota",
        "_critical_dropped",
        "_dominant",
        "_escalate_queue_at",
        "_handed",
        "_hold",
        "_hold_critical",
        "_last_now",
        "_levels",
        "_load_percent",
        "_memory_mb",
        "_meter",
        "_next_check",
        "_parked",
        "_parked_count",
        "_prioritize",
        "_publish_rate",
        "_queue",
        "_ratios",
        "_rng",
        "_sampling_rate",
        "_shed_low",
        "_signals",
        "_track_traffic",
        "_traffic",
        "_transitions",
    )

    def __init__(
        self,
        config: BackpressureConfig,
        rules: Sequence[PolicyRule] = (),
        *,
        rng: random.Random,
        now: float,
        max_subjects: int = DEFAULT_MAX_SUBJECTS,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_breakers: int = DEFAULT_MAX_BREAKERS,
        max_traffic_subjects: int = DEFAULT_MAX_TRAFFIC_SUBJECTS,
        history_size: int = HISTORY_SIZE,
    ) -> None:
        self._config = config
        self._rng = rng
        self._last_now = now
        self._cache_size = cache_size
        self._classifier = SubjectClassifier(rules, cache_size)
        self._acc = Accounting(max_subjects)
        self._queue = PriorityQueue()
        self._parked: dict[str, deque[Any]] = {}
        self._parked_count = 0
        self._handed: dict[int, Any] = {}
        # A rate ceiling set from outside (the fleet's share), None: config.max_publish_rate.
        self._ceiling: float | None = None
        self._bucket = TokenBucket(config.max_publish_rate, _burst(config), now)
        window_s = config.publish_rate_window_ms / 1000.0
        self._meter = RateMeter(window_s, now)
        self._traffic = SubjectTraffic(window_s, now, max_traffic_subjects)
        self._breakers = BreakerBoard(config, max_tracked=max_breakers)
        # The same dict object for the engine's lifetime: `if self._breaker_records` is the hot-path test.
        self._breaker_records = self._breakers.records
        self._levels = LevelTracker(
            config.recovery_threshold_percent, config.recovery_delay_ms, history_size=history_size
        )
        self._memory_mb = 0.0
        self._cpu_percent = 0.0
        self._cpu_quota: float | None = None
        self._publish_rate = 0.0
        self._ratios: tuple[float, ...] = (0.0,) * len(SIGNALS)
        self._signals = SignalBoard(config)
        # Priority classes whose stream-fill level is above the global one: (shed low, sampling rate).
        self._class_raise: dict[Priority, tuple[bool, float]] = {}
        self._load_percent = 0.0
        self._dominant = SIGNALS[0]
        self._next_check = now
        self._escalate_queue_at = 0
        self._hold = False
        self._hold_critical = False
        self._transitions: deque[Transition] = deque(maxlen=PENDING_TRANSITIONS)
        # Critical messages dropped, by reason (must stay 0: an alert fires on any increase).
        self._critical_dropped: dict[str, int] = dict.fromkeys(CRITICAL_DROP_REASONS, 0)
        self._apply_config(config)

    # -- bound from their own modules (functions of this state, called as methods) ------------------------
    forward_batch = bulk.forward_batch
    forwards_at_once = bulk.forwards_at_once
    decide_run = bulk.decide_run
    queue_run = bulk.queue_run
    tick = load.tick
    cpu_threshold_percent = property(load.cpu_threshold_percent)
    _check_level = load.check_level
    has_transitions = property(load.has_transitions)
    pop_transitions = load.pop_transitions
    _apply_level = load.apply_level
    observe_rtt = load.observe_rtt
    observe_in_flight = load.observe_in_flight
    reset_rtt = load.reset_rtt
    observe_stream = load.observe_stream
    forget_stream = load.forget_stream
    stream_names = load.stream_names
    class_levels = load.class_levels
    pop_class_transitions = load.pop_class_transitions
    snapshot = engine_snapshot.snapshot
    forwarded_by_subject = engine_snapshot.forwarded_by_subject
    dropped_by_subject = engine_snapshot.dropped_by_subject
    forwarded_by_subject_role = engine_snapshot.forwarded_by_subject_role
    dropped_by_subject_role = engine_snapshot.dropped_by_subject_role
    by_role = engine_snapshot.by_role
    freed_by_labels = engine_snapshot.freed_by_labels
    dropped_by_reason = engine_snapshot.dropped_by_reason
    batches_by_subject = engine_snapshot.batches_by_subject
    latency_by_subject = engine_snapshot.latency_by_subject
    history = engine_snapshot.history
    take_back = settlement.take_back
    note_refused = settlement.note_refused
    note_unforwarded = settlement.note_unforwarded
    note_forwarded = settlement.note_forwarded
    note_dropped = settlement.note_dropped
    note_spooled = settlement.note_spooled
    note_unspooled = settlement.note_unspooled
    note_spool_dropped = settlement.note_spool_dropped
    observe_latency = settlement.observe_latency

    # -- classification --------------------------------------------------------------------------------
    def classify(
        self, subject: str, header_priority: str | None, cache: bool = True
    ) -> tuple[Priority, PolicyRule | None]:
        """Priority and rule of a message: a valid KPI-Priority header, else the first rule's, else MEDIUM.

        `cache=False` for subjects used once (replies, acks): matched without entering the cache."""
        entry = self._classifier.entry(subject) if cache else self._classifier.match(subject)
        if header_priority is None:
            return entry.default
        priority = _HEADER_PRIORITIES.get(header_priority)
        if priority is None:
            priority = _HEADER_PRIORITIES.get(header_priority.strip().lower())
            if priority is None:
                return entry.default
        return entry.by_priority[priority]  # type: ignore[return-value]

    # -- the publish path ------------------------------------------------------------------------------
    def offer(self, item: Item, now: float, can_send: bool) -> Decision:
        """Decide one offered message: role, breaker, priority shedding, sampling, then forward or queue."""
        role = item.role
        priority = item.priority if self._prioritize else MEDIUM
        if role >= REPLY:
            return self._offer_finishing(item, priority, now, can_send)
        self._meter.add(now)
        if now >= self._next_check:
            self._check_level(now)
        if self._track_traffic and priority < CRITICAL:
            self._traffic.add(item.subject)
        if self._breaker_records:
            gate = self._breakers.gate(item.subject, now, self._rng, priority >= CRITICAL)
            if gate:
                if gate == GATE_DROP:
                    return self._drop(item, _DROP_CIRCUIT_BREAKER)
                return self._park(item)
        if self._class_raise and item.priority in self._class_raise:
            return self._offer_raised(item, priority, role, now, can_send)
        if self._shed_low and priority <= LOW:
            return self._drop(item, _DROP_LOW_PRIORITY)
        rate = self._sampling_rate
        if rate < 1.0 and priority <= MEDIUM and role is DATA and self._rng.random() >= rate:
            self._acc.sampled += 1
            return self._drop(item, _DROP_SAMPLING)
        if self._goes_now(item, now, can_send):
            return self._forward_now(item)
        return self._enqueue(item, priority, now)

    def _goes_now(self, item: Item, now: float, can_send: bool) -> bool:
        """Forwarded at once: the upstream takes writes, no batching, nothing queued, a rate token (and
        not a critical message while the PubAck window holds them)."""
        return (
            can_send
            and self._batch_size == 1
            and not self._queue.size
            and not (self._hold_critical and item.priority >= CRITICAL)
            and self._bucket.try_take(now)
        )

    def _offer_raised(
        self, item: Item, priority: Priority, role: Role, now: float, can_send: bool
    ) -> Decision:
        """offer() for a priority class whose stream fill gives it a level above the sidecar's: that
        level's shedding and sampling, then the usual forward or queue (off the level-none path)."""
        shed_low, rate = self._class_raise[item.priority]
        if shed_low and priority <= LOW:
            return self._drop(item, _DROP_LOW_PRIORITY)
        if rate < 1.0 and priority <= MEDIUM and role is DATA and self._rng.random() >= rate:
            self._acc.sampled += 1
            return self._drop(item, _DROP_SAMPLING)
        if self._goes_now(item, now, can_send):
            return self._forward_now(item)
        return self._enqueue(item, priority, now)

    def _offer_finishing(self, item: Item, priority: Priority, now: float, can_send: bool) -> Decision:
        """A reply or control message: never sampled, shed or broken; not part of the publish-rate signal.

        It goes at once when the upstream takes writes and none of its kind waits, spending a rate token
        even if that leaves the bucket in debt (queued data then waits longer: finishing work goes first).
        A critical one keeps the critical path (queue order, confirmation) without the checks above.
        """
        queue = self._queue
        if priority >= CRITICAL:
            if (
                can_send
                and self._batch_size == 1
                and not queue.size
                and not self._hold_critical
                and self._bucket.try_take(now)
            ):
                return self._forward_now(item)
            return self._enqueue(item, priority, now)
        if can_send and not queue.lane_size(FINISH_LANE):
            self._bucket.spend(now)
            return self._forward_now(item)
        return self._enqueue(item, priority, now)

    def _forward_now(self, item: Item) -> Decision:
        acc = self._acc
        acc.receive(item.priority, item.role)
        acc.forward(item.subject, item.priority, item.role)
        return _FORWARD

    def _drop(self, item: Item, decision: Decision) -> Decision:
        acc = self._acc
        acc.receive(item.priority, item.role)
        acc.drop(item.subject, decision.reason, item.role)  # type: ignore[arg-type]
        if item.priority >= CRITICAL:
            self._count_critical_drop(decision.reason)  # type: ignore[arg-type]
        return decision

    def _make_room(self, lane: int, now: float) -> tuple[bool, tuple[Any, ...]]:
        """Room for one more message of `lane`: (room, evicted)."""
        queue = self._queue
        if queue.size + self._parked_count < self._capacity:
            return True, ()
        self._check_level(now)  # a full queue: the level follows now, not at the next tick
        victim = queue.evict_below(lane)
        if victim is None:
            return False, ()
        self._acc.drop(victim.subject, REASON_QUEUE_FULL, victim.role)
        return True, (victim,)

    def _enqueue(self, item: Item, priority: Priority, now: float) -> Decision:
        role = item.role
        room, evicted = self._make_room(lane_of(priority, role), now)
        if not room:
            if priority >= CRITICAL:
                return _BLOCK
            return self._drop(item, _DROP_QUEUE_FULL)
        queue = self._queue
        queue.push(item, priority, now, role)
        self._acc.receive(item.priority, role)
        if queue.size + self._parked_count >= self._escalate_queue_at:
            self._check_level(now)
        return Decision(Verdict.QUEUE, None, evicted) if evicted else _QUEUE

    def _park(self, item: Item) -> Decision:
        # A critical message for an open breaker waits beside the queue until the breaker is not open.
        room, evicted = self._make_room(CRITICAL_LANE, self._last_now)
        if not room:
            return _BLOCK
        parked = self._parked.get(item.subject)
        if parked is None:
            parked = self._parked[item.subject] = deque()
        parked.append(item)
        self._parked_count += 1
        self._acc.receive(item.priority, item.role)
        return Decision(Verdict.QUEUE, None, evicted) if evicted else _QUEUE

    def _release_parked(self, now: float) -> None:
        if not self._parked:
            return
        state_of = self._breakers.state_of
        for subject in [s for s in self._parked if state_of(s) is not BreakerState.OPEN]:
            items = self._parked.pop(subject)
            self._parked_count -= len(items)
            for item in items:
                self._queue.push(item, CRITICAL, now, item.role)

    def take(self, now: float, limit: int | None = None, batch_due: bool = False) -> list[Any]:
        """Queued messages due now, in lane order, within the rate ceiling; counted forwarded.

        Replies and control messages go first, without waiting for a token (they may leave the bucket in
        debt). A queued request makes the batching delay count as expired: requests never wait for a
        batch to fill. While `hold_below_critical` (a spool replay), only critical messages go.
        `limit` caps how many one call releases (the shell writes in slices while the upstream takes them).
        `batch_due`: the batching delay counts as expired (a run decided in bulk is about to fill batches:
        the partial batch waiting goes ahead of it).
        """
        queue = self._queue
        if not queue.size:
            return []
        out: list[Any] = []
        finishing = queue.lane_size(FINISH_LANE)
        if finishing:
            count = finishing if limit is None else min(finishing, limit)
            bucket = self._bucket
            for _ in range(count):
                bucket.spend(now)
                out.append(queue.pop_lane(FINISH_LANE))
            if limit is not None:
                limit -= count
                if limit <= 0:
                    return self._forward_all(out)
        size = queue.lane_size(CRITICAL_LANE) if self._hold else queue.size - queue.lane_size(FINISH_LANE)
        if self._hold_critical:
            # Critical messages wait for PubAcks; without prioritization they are not told apart: all do.
            size = size - queue.lane_size(CRITICAL_LANE) if self._prioritize else 0
        if size <= 0:
            return self._forward_all(out)
        size_target = self._batch_size
        delay_expired = True
        if size_target > 1 and not queue.has_requests and not batch_due:
            oldest = queue.oldest_time()
            # Same expression as next_deadline(), so that take(next_deadline()) releases.
            delay_expired = oldest is not None and now >= oldest + self._batch_delay_s
            if size < size_target and not delay_expired:
                return self._forward_all(out)
        # The epsilon absorbs float error in the refill so that a whole token reads as one.
        tokens = int(self._bucket.refill(now) + 1e-9)
        count = release_count(size, tokens, size_target, delay_expired)
        if limit is not None and count > limit:
            # Whole batches only, unless a single batch is already larger than the limit.
            count = max(limit - limit % size_target, min(limit, count))
        if count > 0:
            self._bucket.take(count)
            if self._hold:
                out.extend(queue.pop_lane(CRITICAL_LANE) for _ in range(count))
            else:
                # Messages of a run queued in bulk leave together (RunSlice), the others one by one.
                below = CRITICAL_LANE if self._hold_critical else LANES + 1
                pop_many = queue.pop_many
                sliced = False
                while count > 0:
                    item = pop_many(count, below)
                    out.append(item)
                    if type(item) is RunSlice:
                        count -= item.n
                        sliced = True
                    else:
                        count -= 1
                if sliced:
                    return self._forward_sliced(out)
        return self._forward_all(out)

    def _forward_all(self, items: list[Any]) -> list[Any]:
        if items:
            acc = self._acc
            for item in items:
                acc.forward(item.subject, item.priority, item.role)
            acc.record_batch(items, len(items))
        return items

    def _forward_sliced(self, items: list[Any]) -> list[Any]:
        """_forward_all for items some of which are RunSlices (counted per group)."""
        acc = self._acc
        counted: list[Any] = []
        total = 0
        for item in items:
            if type(item) is RunSlice:
                for subject, k, priority, role in item.groups:
                    acc.forward(subject, priority, role, k)
                    counted.append(bulk.Written(subject, role))
                total += item.n
            else:
                acc.forward(item.subject, item.priority, item.role)
                counted.append(item)
                total += 1
        acc.record_batch(counted, total)
        return items

    def next_deadline(self) -> float | None:
        """When take() may return more (may be in the past: call it now); None while nothing can be due."""
        queue = self._queue
        if not queue.size:
            return None
        bucket = self._bucket
        if queue.lane_size(FINISH_LANE):
            return bucket.stamp  # never after now: the last refill
        if self._hold and not queue.lane_size(CRITICAL_LANE):
            return None  # the spool replay lifts the hold and pumps again
        if self._hold_critical and (not self._prioritize or queue.size == queue.lane_size(CRITICAL_LANE)):
            return None  # PubAcks coming back lift the hold and pump again
        size_target = self._batch_size
        if size_target <= 1 or queue.has_requests:
            return bucket.time_for(1)
        oldest = queue.oldest_time()
        assert oldest is not None
        by_delay = max(oldest + self._batch_delay_s, bucket.time_for(1))
        if queue.size >= size_target:
            return min(by_delay, bucket.time_for(size_target))
        return by_delay

    @property
    def _unheld_queued(self) -> int:
        """Queued messages that may leave now: all but the critical ones while hold_critical."""
        queue = self._queue
        if self._hold_critical and self._prioritize:
            return queue.size - queue.lane_size(CRITICAL_LANE)
        return queue.size

    @property
    def hold_critical(self) -> bool:
        """While True, critical messages are queued, not forwarded, and take() releases the others: the
        PubAck window (spool.maxPendingAcks) is full. Without prioritization nothing is released."""
        return self._hold_critical

    @hold_critical.setter
    def hold_critical(self, hold: bool) -> None:
        self._hold_critical = hold

    @property
    def hold_below_critical(self) -> bool:
        """While True, take() releases only critical messages (and replies and control messages)."""
        return self._hold

    @hold_below_critical.setter
    def hold_below_critical(self, hold: bool) -> None:
        self._hold = hold

    def tokens(self, now: float) -> int:
        """Whole rate tokens in the bucket now: how many messages the ceiling lets go at once (as
        forward_batch and decide_run count them)."""
        return int(self._bucket.refill(now))

    def take_tokens(self, now: float, count: int) -> int:
        """Spend up to `count` rate tokens for messages sent outside the queue (spool replay): how many."""
        bucket = self._bucket
        granted = min(count, int(bucket.refill(now) + 1e-9))
        if granted <= 0:
            return 0
        bucket.take(granted)
        return granted

    def drain(self, now: float) -> list[Any]:
        """Everything held (queue and parked), ignoring batching and the rate ceiling; counted forwarded."""
        self._last_now = now
        return self._forward_all(self._pop_everything())

    def clear(self) -> list[Any]:
        """Remove every queued non-critical data message and request, counted dropped "cleared" (replies
        and control messages stay: they finish work already admitted)."""
        removed = self._queue.remove_if(lambda item: item.priority < CRITICAL and item.role < REPLY)
        acc = self._acc
        for item in removed:
            acc.drop(item.subject, REASON_CLEARED, item.role)
        return removed

    def drain_all_for_shutdown(self) -> list[Any]:
        """Everything held, uncounted: the shell settles each with note_forwarded/_spooled/_dropped."""
        items = self._pop_everything()
        for item in items:
            self._handed[id(item)] = item
        return items

    def hand_over_critical(self) -> list[Any]:
        """Queued and parked critical messages, uncounted, for the shell to spool (settle with note_*)."""
        # Runs queued in bulk hold no critical message (queue_run).
        items = self._queue.remove_if(lambda item: item.priority >= CRITICAL, runs=False)
        for subject in list(self._parked):
            items.extend(self._parked.pop(subject))
        self._parked_count = 0
        for item in items:
            self._handed[id(item)] = item
        return items

    def requeue_handed(self, item: Any, now: float) -> None:
        """Put back a message handed over by hand_over_critical() that the shell could not place."""
        self._handed.pop(id(item), None)
        self._queue.push(item, CRITICAL, now, item.role)

    def drop_queued(self, predicate: Callable[[Any], bool], reason: str) -> list[Any]:
        """Remove queued messages matching `predicate`, counted as dropped for `reason`."""
        items = self._queue.remove_if(predicate)
        for item in items:
            self._acc.drop(item.subject, reason, item.role)
            if item.priority >= CRITICAL:
                self._count_critical_drop(reason)
        return items

    def _count_critical_drop(self, reason: str) -> None:
        # With enablePrioritization off every message is treated as medium: nothing is critical then.
        if self._prioritize:
            self._critical_dropped[reason] = self._critical_dropped.get(reason, 0) + 1

    def critical_dropped_by_reason(self) -> dict[str, int]:
        """Critical messages dropped, by reason (the known reasons present at 0)."""
        return dict(self._critical_dropped)

    def oldest_queued_age_of(self, priority: Priority, now: float) -> float:
        """Seconds the oldest queued message of `priority` has waited (0 when it has none)."""
        if priority >= CRITICAL:
            lanes: tuple[int, ...] = (CRITICAL_LANE,)
        else:
            lanes = (lane_of(priority, DATA), lane_of(priority, Role.REQUEST))
        times = [t for t in (self._queue.oldest_time_of(lane) for lane in lanes) if t is not None]
        return max(0.0, now - min(times)) if times else 0.0

    def critical_queued(self) -> int:
        """Critical messages held in memory (queue and parked)."""
        return self._queue.size_of(CRITICAL) + self._parked_count

    def _pop_everything(self) -> list[Any]:
        items = self._queue.pop_all()
        for parked in self._parked.values():
            items.extend(parked)
        self._parked.clear()
        self._parked_count = 0
        return items

    # -- circuit breakers --------------------------------------------------------------------------------
    def breaker_failure(self, subject: str, now: float) -> None:
        """A forward to `subject` failed (permission violation, JetStream error or timeout, max payload).

        Replies and control subjects are never broken (each is used once: a record would only fill the
        table)."""
        if self._config.enable_circuit_breaker and subject_role(subject) is None:
            self._breakers.failure(subject, now)

    def breaker_success(self, subject: str, now: float) -> None:
        """A forward to `subject` succeeded; a no-op unless the subject has a breaker record."""
        if self._breaker_records:
            self._breakers.success(subject, now, self._levels.level is Level.CRITICAL)
            self._release_parked(now)

    def open_breaker(self, subject: str, now: float) -> bool:
        """Open by hand until closed or reset by hand; False when the breaker table is full."""
        return self._breakers.open(subject, now)

    def close_breaker(self, subject: str, now: float) -> bool:
        """Close by hand (failure count and backoff kept); False when it was not open."""
        closed = self._breakers.close(subject, now)
        self._release_parked(now)
        return closed

    def reset_breaker(self, subject: str, now: float) -> bool:
        """Forget the subject's breaker: closed, no failures, base backoff; False when there was none."""
        reset = self._breakers.reset(subject, now)
        self._release_parked(now)
        return reset

    def received_by_priority(self) -> dict[str, int]:
        """Messages received, by declared priority label."""
        counts = self._acc.received_by_priority
        return {p.label: counts[p] for p in Priority}

    @property
    def has_breakers(self) -> bool:
        """True while any subject has a breaker record (the shell skips breaker work otherwise)."""
        return bool(self._breaker_records)

    def breaker_state(self, subject: str) -> BreakerState:
        """Current state of the subject's breaker."""
        return self._breakers.state_of(subject)

    def breakers(self) -> list[BreakerSnapshot]:
        """Every tracked breaker (open, half-open, or closed with recent failures)."""
        return self._breakers.snapshots()

    def pop_breaker_changes(self) -> list[BreakerChange]:
        """Breaker state changes since the last call, for the shell to log once each."""
        return self._breakers.pop_changes()

    # -- configuration -------------------------------------------------------------------------------------
    def update_config(
        self,
        config: BackpressureConfig,
        rules: Sequence[PolicyRule] | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """Replace the configuration (already validated) and optionally the rules, all at once."""
        if now is None:
            now = self._last_now
        # Build what can fail first, so that nothing changes if it does.
        classifier = SubjectClassifier(rules, self._cache_size) if rules is not None else self._classifier
        old = self._config
        self._config = config
        self._classifier = classifier
        rate = self.rate_ceiling
        self._bucket.configure(rate, _burst(config, rate), now)
        if config.publish_rate_window_ms != old.publish_rate_window_ms:
            window_s = config.publish_rate_window_ms / 1000.0
            self._meter = RateMeter(window_s, now)
            self._traffic.configure(window_s)
        self._breakers.configure(config)
        if old.enable_circuit_breaker and not config.enable_circuit_breaker:
            self._breakers.forget_automatic(now)
            self._release_parked(now)
        self._levels.configure(config.recovery_threshold_percent, config.recovery_delay_ms)
        self._signals.configure(config)
        self._apply_config(config)

    def _apply_config(self, config: BackpressureConfig) -> None:
        self._prioritize = config.enable_prioritization
        self._track_traffic = config.enable_circuit_breaker and config.breaker_critical_top_subjects > 0
        self._capacity = config.max_queue_size
        self._batch_delay_s = config.max_batch_delay_ms / 1000.0
        self._apply_level()

    def set_rate_ceiling(self, rate: float | None, now: float) -> None:
        """Make `rate` (msg/s) the publish-rate ceiling in place of maxPublishRate (the fleet's share);
        None: back to maxPublishRate. The publish-rate signal is measured against the ceiling in force."""
        if rate is not None and not (rate > 0.0 and math.isfinite(rate)):
            raise ValueError(f"a rate ceiling must be a positive number of messages per second, not {rate}")
        if rate == self._ceiling:
            return
        self._ceiling = rate
        effective = self.rate_ceiling
        self._bucket.configure(effective, _burst(self._config, effective), now)

    @property
    def rate_ceiling(self) -> float:
        """The publish-rate ceiling in force (msg/s): the one set by set_rate_ceiling, else maxPublishRate."""
        ceiling = self._ceiling
        return self._config.max_publish_rate if ceiling is None else ceiling

    @property
    def config(self) -> BackpressureConfig:
        """The configuration in force."""
        return self._config

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        """The `policies:` rules in force."""
        return self._classifier.rules

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def level(self) -> Level:
        """Current degradation level."""
        return self._levels.level

    @property
    def load_percent(self) -> float:
        """Load computed at the last tick."""
        return self._load_percent

    @property
    def dominant_signal(self) -> str:
        """Signal that produced the load at the last tick."""
        return self._dominant

    @property
    def sampling_rate(self) -> float:
        """Share of low and medium messages kept at the current level (1.0 when sampling is off)."""
        return self._sampling_rate

    @property
    def batch_size(self) -> int:
        """Messages per batch at the current level (1 when batching is off)."""
        return self._batch_size

    @property
    def queue_size(self) -> int:
        """Messages held: queued, parked behind an open breaker, or handed off for shutdown and unsettled."""
        return self._queue.size + self._parked_count + len(self._handed)

    @property
    def received(self) -> int:
        """Messages counted in."""
        return self._acc.received

    @property
    def forwarded(self) -> int:
        """Messages counted as written upstream (including spool replays)."""
        return self._acc.forwarded

    @property
    def dropped(self) -> int:
        """Messages counted as dropped, for any reason (sampled ones included)."""
        return self._acc.dropped

    @property
    def sampled(self) -> int:
        """Messages dropped by sampling (also counted in `dropped`)."""
        return self._acc.sampled

    @property
    def spooled(self) -> int:
        """Messages currently in the disk spool."""
        return self._acc.spooled


def _burst(config: BackpressureConfig, rate: float | None = None) -> float:
    return max(1.0, (config.max_publish_rate if rate is None else rate) * config.rate_burst_seconds)
