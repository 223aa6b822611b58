"""The engine's view of the new signals: RTTs, queue delay, queue and spool trends, and stream fill.

The engine asks it for three global load percents (upstream_latency, queue_delay, predicted_queue) each
time it evaluates its load, and, at each tick, for the level each priority class gets from the fill of the
JetStream streams its rules publish into (stream_fill raises that class, not the sidecar).
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from policies.config import BackpressureConfig, Level, Priority
from policies.forecast import Forecast, TrendTracker, predicted_percent
from policies.levels import LevelTracker, Transition
from policies.signals import (
    MAX_STREAMS,
    STREAM_STALE_S,
    QueueDelay,
    RttReading,
    RttTracker,
    StreamReading,
    fill_percent,
    latency_percent,
    refuses_new,
    stream_fill,
)

# Local CPU load percent (the `low` floor) from which RTTs are taken as the sidecar's own slowness.
SELF_SLOW_CPU_PERCENT = 70.0
PING = "ping"
PUBACK = "puback"
RTT_SOURCES = (PING, PUBACK)
STREAM_FILL = "stream_fill"


class ClassTransition(NamedTuple):
    """A priority class's own level changed (stream fill); the shell logs it once."""

    priority: Priority
    transition: Transition
    stream: str


class RttView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    samples: int
    rtt_ms: float | None
    baseline_ms: float | None
    ratio: float | None
    last_ms: float | None


class StreamView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    priority: str
    subjects: list[str]
    bytes: int
    max_bytes: int
    msgs: int
    max_msgs: int
    discard: str
    fill: float
    load_percent: float
    refusing_new: bool
    age_s: float


class ForecastView(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    samples: int
    slope_per_s: float | None
    seconds_to_full: float | None
    projected: float | None
    capacity: float


class SignalsSnapshot(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The new signals at one instant (admin API, metrics, history)."""

    upstream_latency_percent: float
    queue_delay_percent: float
    predicted_queue_percent: float
    rtt: dict[str, RttView]
    in_flight_ms: float
    queue_delay_ms: float
    queue_delay_target_ms: float
    queue_delay_standing: bool
    queue_forecast: ForecastView
    spool_forecast: ForecastView
    horizon_s: float
    streams: list[StreamView]
    class_levels: dict[str, str]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


class SignalBoard:
    """State of the new signals; pure: every call takes `now`."""

    __slots__ = (
        "_class_levels",
        "_class_stream",
        "_config",
        "_delay",
        "_in_flight_s",
        "_queue_capacity",
        "_queue_forecast",
        "_queue_trend",
        "_rtt",
        "_spool_capacity",
        "_spool_forecast",
        "_spool_trend",
        "_streams",
        "class_transitions",
        "latency_percent",
        "predicted_percent",
        "upstream_connected",
    )

    def __init__(self, config: BackpressureConfig) -> None:
        self._config = config
        window = config.rtt_baseline_window_s
        self._rtt = {
            s: RttTracker(baseline_window_s=window, min_samples=config.min_rtt_samples) for s in RTT_SOURCES
        }
        self._in_flight_s = 0.0
        self._delay = QueueDelay(
            config.queue_delay_target_ms / 1000.0, config.queue_delay_interval_ms / 1000.0
        )
        trend = {"window_s": config.prediction_window_s, "min_samples": config.prediction_min_samples}
        self._queue_trend = TrendTracker(**trend)  # type: ignore[arg-type]
        self._spool_trend = TrendTracker(**trend)  # type: ignore[arg-type]
        self._queue_forecast = Forecast(0, None, None, None, None)
        self._spool_forecast = Forecast(0, None, None, None, None)
        self._queue_capacity = float(config.max_queue_size)
        self._spool_capacity = 0.0
        self._streams: dict[str, StreamReading] = {}
        self._class_levels: dict[Priority, LevelTracker] = {}
        self._class_stream: dict[Priority, str] = {}
        self.class_transitions: list[ClassTransition] = []
        self.latency_percent = 0.0
        self.predicted_percent = 0.0
        # While the upstream is away the queue waits for it, not for a slow drain: queue length, the
        # spool and the forecast cover an outage; queue_delay counts only while connected.
        self.upstream_connected = True

    def configure(self, config: BackpressureConfig) -> None:
        self._config = config
        for tracker in self._rtt.values():
            tracker.configure(
                baseline_window_s=config.rtt_baseline_window_s, min_samples=config.min_rtt_samples
            )
        self._delay.configure(config.queue_delay_target_ms / 1000.0, config.queue_delay_interval_ms / 1000.0)
        for trend in (self._queue_trend, self._spool_trend):
            trend.configure(window_s=config.prediction_window_s, min_samples=config.prediction_min_samples)
        self._queue_capacity = float(config.max_queue_size)
        for tracker in self._class_levels.values():
            tracker.configure(config.recovery_threshold_percent, config.recovery_delay_ms)

    # -- feeding -----------------------------------------------------------------------------------------
    def observe_rtt(self, now: float, seconds: float, source: str = PING) -> None:
        """One round trip: a PONG after its PING, or a PubAck after its publish."""
        self._rtt[source].observe(now, seconds)

    def observe_in_flight(self, seconds: float) -> None:
        """Age of the oldest PING still unanswered (0 when none)."""
        self._in_flight_s = max(0.0, seconds)

    def reset_rtt(self) -> None:
        """A new upstream connection (maybe another server): baselines start again."""
        for tracker in self._rtt.values():
            tracker.reset()
        self._in_flight_s = 0.0

    def observe_stream(self, reading: StreamReading) -> None:
        """A STREAM.INFO answer (bounded: at most MAX_STREAMS streams are tracked)."""
        if reading.name in self._streams or len(self._streams) < MAX_STREAMS:
            self._streams[reading.name] = reading

    def forget_stream(self, name: str) -> None:
        self._streams.pop(name, None)

    def stream_names(self) -> list[str]:
        return list(self._streams)

    # -- the load percents ---------------------------------------------------------------------------------
    def rtt_reading(self, source: str) -> RttReading:
        in_flight = self._in_flight_s if source == PING else 0.0
        return self._rtt[source].reading(in_flight)

    def _latency_percent(self) -> float:
        config = self._config
        ratio = config.upstream_latency_ratio
        if ratio <= 0.0:
            return 0.0
        floor_s = config.upstream_latency_floor_ms / 1000.0
        best = 0.0
        for source in RTT_SOURCES:
            reading = self.rtt_reading(source)
            if reading.rtt_s is not None and reading.baseline_s is not None:
                best = max(best, latency_percent(reading.rtt_s, reading.baseline_s, ratio, floor_s))
        return best

    def queue_delay_percent(
        self, now: float, oldest_age_s: float, length: int, paced_s: float = 0.0
    ) -> float:
        """Called at each load evaluation with the oldest queued message's sojourn and the part of it the
        rate ceiling explains (`paced_s`: the queue drained at the ceiling's pace)."""
        if not self.upstream_connected:
            return self._delay.observe(now, 0.0, length)
        return self._delay.observe(now, oldest_age_s, length, paced_s)

    def tick(
        self,
        now: float,
        queue_len: int,
        spool_bytes: int | None,
        spool_capacity: int | None,
        cpu_percent: float = 0.0,
    ) -> None:
        """Once a tick: trend samples, forecasts, the latency percent and the classes' stream levels.

        `cpu_percent`: the CPU load percent; at or above SELF_SLOW_CPU_PERCENT the round trips measure
        the sidecar's own slowness (a PONG waits in the socket until a starved loop reads it), which the
        CPU signal already counts: upstream_latency is not counted then."""
        config = self._config
        self.latency_percent = self._latency_percent() if cpu_percent < SELF_SLOW_CPU_PERCENT else 0.0
        horizon = config.prediction_horizon_s
        self._queue_trend.observe(now, float(queue_len))
        self._queue_forecast = self._queue_trend.forecast(now, self._queue_capacity, horizon)
        predicted = predicted_percent(self._queue_forecast, self._queue_capacity)
        if spool_bytes is not None and spool_capacity:
            self._spool_capacity = float(spool_capacity)
            self._spool_trend.observe(now, float(spool_bytes))
            self._spool_forecast = self._spool_trend.forecast(now, self._spool_capacity, horizon)
            predicted = max(predicted, predicted_percent(self._spool_forecast, self._spool_capacity))
        self.predicted_percent = predicted if horizon > 0.0 else 0.0
        self._tick_streams(now)

    def _tick_streams(self, now: float) -> None:
        streams = self._streams
        for name in [n for n, r in streams.items() if now - r.at > STREAM_STALE_S]:
            del streams[name]
        threshold = self._config.stream_fill_threshold
        by_class: dict[Priority, tuple[float, str]] = {}
        for reading in streams.values():
            percent = fill_percent(stream_fill(reading), threshold)
            best = by_class.get(reading.priority)
            if best is None or percent > best[0]:
                by_class[reading.priority] = (percent, reading.name)
        config = self._config
        for priority in list(self._class_levels):
            if priority not in by_class:
                by_class[priority] = (0.0, self._class_stream.get(priority, ""))
        for priority, (percent, name) in by_class.items():
            tracker = self._class_levels.get(priority)
            if tracker is None:
                if percent < 70.0:
                    continue  # no tracker (and no bookkeeping) for a class whose streams are roomy
                tracker = LevelTracker(config.recovery_threshold_percent, config.recovery_delay_ms, 100)
                self._class_levels[priority] = tracker
            transition = tracker.observe(now, percent, STREAM_FILL)
            if transition is not None:
                self.class_transitions.append(ClassTransition(priority, transition, name))
                del self.class_transitions[:-100]
            self._class_stream[priority] = name
            if tracker.level is Level.NONE and percent == 0.0:
                del self._class_levels[priority]
                self._class_stream.pop(priority, None)

    def class_levels(self) -> dict[Priority, Level]:
        """The level stream fill gives each priority class that has one above none."""
        return {p: t.level for p, t in self._class_levels.items() if t.level is not Level.NONE}

    # -- reading -------------------------------------------------------------------------------------------
    def snapshot(self, now: float, queue_delay_percent: float) -> SignalsSnapshot:
        config = self._config
        threshold = config.stream_fill_threshold
        streams = []
        for r in sorted(self._streams.values(), key=lambda r: r.name):
            fill = stream_fill(r)
            streams.append(
                StreamView(
                    name=r.name,
                    priority=r.priority.label,
                    subjects=list(r.subjects),
                    bytes=r.bytes,
                    max_bytes=r.max_bytes,
                    msgs=r.msgs,
                    max_msgs=r.max_msgs,
                    discard=r.discard,
                    fill=fill,
                    load_percent=fill_percent(fill, threshold),
                    refusing_new=refuses_new(r, fill),
                    age_s=max(0.0, now - r.at),
                )
            )
        rtt = {}
        for source in RTT_SOURCES:
            reading = self.rtt_reading(source)
            rtt[source] = RttView(
                samples=reading.samples,
                rtt_ms=_ms(reading.rtt_s),
                baseline_ms=_ms(reading.baseline_s),
                ratio=reading.ratio,
                last_ms=_ms(reading.last_s),
            )
        return SignalsSnapshot(
            upstream_latency_percent=self.latency_percent,
            queue_delay_percent=queue_delay_percent,
            predicted_queue_percent=self.predicted_percent,
            rtt=rtt,
            in_flight_ms=self._in_flight_s * 1000.0,
            queue_delay_ms=self._delay.sojourn_s * 1000.0,
            queue_delay_target_ms=float(config.queue_delay_target_ms),
            queue_delay_standing=self._delay.standing(now),
            queue_forecast=_forecast_view(self._queue_forecast, self._queue_capacity),
            spool_forecast=_forecast_view(self._spool_forecast, self._spool_capacity),
            horizon_s=config.prediction_horizon_s,
            streams=streams,
            class_levels={p.label: level.label for p, level in sorted(self.class_levels().items())},
        )


def _forecast_view(forecast: Forecast, capacity: float) -> ForecastView:
    return ForecastView(
        samples=forecast.samples,
        slope_per_s=forecast.slope_per_s,
        seconds_to_full=forecast.seconds_to_full,
        projected=forecast.projected,
        capacity=capacity,
    )
