"""The engine's load and level: signal samples in (tick, the signal board's observations), the load
percent, the level and what it sets (sampling, batch size, shedding, the classes raised by stream fill).

`Engine.tick`, `Engine.observe_rtt` and the others here are these functions, bound as the engine's methods:
they read and update the engine's state as its other methods do (policies/engine.py).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from policies.batching import batch_size
from policies.config import Level, Priority
from policies.levels import LOWER_BOUNDS, Transition
from policies.sampling import sampling_rate
from policies.signal_board import PING, ClassTransition
from policies.signals import StreamReading

if TYPE_CHECKING:
    from policies.engine import Engine

SIGNALS = (
    "memory",
    "cpu",
    "queue",
    "publish_rate",
    "upstream_latency",
    "queue_delay",
    "predicted_queue",
)
# Between ticks, offers re-evaluate the level (escalation only) at most this often, and at once when the
# queue crosses into a higher band or a message is dropped queue_full.
CHECK_INTERVAL_S = 0.05


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP


def tick(
    self: Engine,
    now: float,
    *,
    memory_mb: float | None = None,
    cpu_percent: float | None = None,
    cpu_quota_cores: float | _Keep | None = KEEP,
    spool_bytes: int | None = None,
    spool_capacity: int | None = None,
    upstream_connected: bool | None = None,
) -> Transition | None:
    """Take new signal samples (None: keep the last), re-evaluate the level, run breaker timers.

    `cpu_quota_cores`: the cgroup quota in cores, None for no quota, omitted to keep the last value.
    `spool_bytes` / `spool_capacity`: the disk spool's fill and limit, for its trend (None: no spool).
    `upstream_connected`: False while the upstream is away (queue_delay pauses; None: keep).
    RTTs, PING ages and stream readings arrive between ticks (observe_rtt, observe_stream).
    """
    self._last_now = now
    if memory_mb is not None:
        self._memory_mb = memory_mb
    if cpu_percent is not None:
        self._cpu_percent = cpu_percent
    if cpu_quota_cores is not KEEP:
        self._cpu_quota = cpu_quota_cores
    self._traffic.rotate(now)
    self._acc.expire_idle(now)
    board = self._signals
    if upstream_connected is not None:
        board.upstream_connected = upstream_connected
    board.tick(
        now,
        self._queue.size + self._parked_count,
        spool_bytes,
        spool_capacity,
        self._cpu_percent * 100.0 / self.cpu_threshold_percent,
    )
    evaluate(self, now)
    transition = self._levels.observe(now, self._load_percent, self._dominant)
    if transition is not None:
        apply_level(self)
        self._transitions.append(transition)
    elif board.class_transitions or self._class_raise:
        apply_class_levels(self)
    critical = self._levels.level is Level.CRITICAL
    config = self._config
    if critical and config.enable_circuit_breaker and config.breaker_critical_top_subjects:
        top = config.breaker_critical_top_subjects
        heavy = self._traffic.heavy_hitters(now, config.breaker_critical_share, self.rate_ceiling, top)
        self._breakers.open_busiest(heavy, now, top)
    if self._breaker_records:
        self._breakers.advance(now, critical)
    self._release_parked(now)
    return transition


def cpu_threshold_percent(self: Engine) -> float:
    """CPU threshold in percent of one core: maxCpuUsagePercent, scaled by a quota below 1 core."""
    threshold = self._config.max_cpu_usage_percent
    quota = self._cpu_quota
    if quota is not None and 0.0 < quota < 1.0:
        return threshold * quota
    return threshold


def evaluate(self: Engine, now: float) -> None:
    """The load percent of each signal at `now`, the highest (the load) and the signal that gave it."""
    config = self._config
    self._publish_rate = self._meter.rate(now)
    # Percent first (value * 100 / max) so that exact boundary loads stay exact in floating point.
    queue = self._queue
    oldest = queue.oldest_time()
    board = self._signals
    ceiling = self.rate_ceiling
    percents = (
        self._memory_mb * 100.0 / config.max_memory_usage_mb,
        self._cpu_percent * 100.0 / self.cpu_threshold_percent,
        (queue.size + self._parked_count) * 100.0 / config.max_queue_size,
        self._publish_rate * 100.0 / ceiling,
        board.latency_percent,
        # The wait the ceiling itself imposes (the queue at its pace) is publish_rate's to count: a
        # queue the ceiling holds full would otherwise read maxQueueSize / ceiling seconds of delay
        # and take any excess of unsheddable traffic to critical (docs/signals.md).
        board.queue_delay_percent(
            now,
            0.0 if oldest is None else max(0.0, now - oldest),
            queue.size + self._parked_count,
            queue.size / ceiling,
        ),
        board.predicted_percent,
    )
    load = max(percents)
    self._ratios = tuple(p / 100.0 for p in percents)  # type: ignore[assignment]
    self._load_percent = load
    self._dominant = SIGNALS[percents.index(load)]


def check_level(self: Engine, now: float) -> None:
    """Between ticks: re-evaluate the load with the last memory and CPU samples and escalate at once if
    it is in a higher band (recovery waits for the tick)."""
    self._next_check = now + CHECK_INTERVAL_S
    evaluate(self, now)
    transition = self._levels.escalate(now, self._load_percent, self._dominant)
    if transition is not None:
        apply_level(self)
        self._transitions.append(transition)


def has_transitions(self: Engine) -> bool:
    """True while pop_transitions() has something to return."""
    return bool(self._transitions)


def pop_transitions(self: Engine) -> list[Transition]:
    """Level changes since the last call (at ticks and between them), oldest first, for the shell to
    log once each (at most PENDING_TRANSITIONS kept)."""
    transitions = list(self._transitions)
    self._transitions.clear()
    return transitions


def apply_level(self: Engine) -> None:
    """What the level in force sets: sampling rate, batch size, low shedding, raised classes, the queue
    length that re-evaluates at once."""
    level = self._levels.level
    config = self._config
    self._sampling_rate = sampling_rate(level, config.enable_sampling)
    self._batch_size = batch_size(level, config.batch_size_multiplier, config.enable_batching)
    self._shed_low = config.enable_prioritization and level >= Level.HIGH
    apply_class_levels(self)
    # The queue length that moves the load into the next band: crossing it re-evaluates at once.
    if level is Level.CRITICAL:
        self._escalate_queue_at = 1 << 62
    else:
        floor = LOWER_BOUNDS[Level(level + 1)]
        self._escalate_queue_at = max(1, -(-int(floor * config.max_queue_size) // 100))


def apply_class_levels(self: Engine) -> None:
    """Priority classes whose streams fill get their own level's shedding, when above the global one."""
    level = self._levels.level
    config = self._config
    raise_: dict[Priority, tuple[bool, float]] = {}
    for priority, class_level in self._signals.class_levels().items():
        if class_level > level:
            shed = config.enable_prioritization and class_level >= Level.HIGH
            raise_[priority] = (shed, sampling_rate(class_level, config.enable_sampling))
    self._class_raise = raise_


def observe_rtt(self: Engine, now: float, seconds: float, source: str = PING) -> None:
    """An upstream round trip (source "ping": PING to PONG; "puback": publish to PubAck)."""
    self._signals.observe_rtt(now, seconds, source)


def observe_in_flight(self: Engine, seconds: float) -> None:
    """Age of the oldest upstream PING still unanswered, at the tick (0 when none)."""
    self._signals.observe_in_flight(seconds)


def reset_rtt(self: Engine) -> None:
    """A new upstream connection: RTT baselines start again."""
    self._signals.reset_rtt()


def observe_stream(self: Engine, reading: StreamReading) -> None:
    """A JetStream stream's fill (from STREAM.INFO); applied at the next tick."""
    self._signals.observe_stream(reading)


def forget_stream(self: Engine, name: str) -> None:
    """The stream is no longer published into by any rule."""
    self._signals.forget_stream(name)


def stream_names(self: Engine) -> list[str]:
    """Streams with a current reading."""
    return self._signals.stream_names()


def class_levels(self: Engine) -> dict[Priority, Level]:
    """The level stream fill gives each priority class that has one above none."""
    return self._signals.class_levels()


def pop_class_transitions(self: Engine) -> list[ClassTransition]:
    """Class level changes (stream fill) since the last call, for the shell to log once each."""
    changes = self._signals.class_transitions
    self._signals.class_transitions = []
    return changes
