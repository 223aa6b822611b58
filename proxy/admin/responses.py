"""The admin API's answers as msgspec Structs: what each handler returns inside the envelope's `data`.

The handlers build these and msgspec encodes them; proxy/admin/openapi.py generates the response
schemas from the same classes (msgspec.json.schema_components), so the document cannot drift from the
answers. Field order is the JSON key order; a docstring becomes the schema's description. Values are
passed to the constructors as the engine reports them (no conversion), so an int stays an int on the wire.

Size: over 400 lines on purpose: it is only declarations, one class per answer and per nested object, and
keeping them in one file keeps the wire format of the whole API readable in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from policies.config import BackpressureConfig, PolicyRule
from policies.signal_board import SignalsSnapshot
from proxy.admin.recommendations import Recommendation
from proxy.admin.requests import LoadTestSpec

TOKENS: Final = {"mb": "MB"}


def camel(name: str) -> str:
    """snake_case to the API's camelCase, keeping units upper case (current_memory_mb -> currentMemoryMB)."""
    first, *rest = name.split("_")
    return first + "".join(TOKENS.get(part, part[:1].upper() + part[1:]) for part in rest)


NNInt = Annotated[int, Meta(ge=0)]
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
LevelName = Literal["none", "low", "medium", "high", "critical"]
Signal = Literal[
    "memory", "cpu", "queue", "publish_rate", "upstream_latency", "queue_delay", "predicted_queue"
]
ComponentStatus = Literal["ok", "warning", "critical"]
OverallStatus = Literal["healthy", "degraded", "critical"]
BreakerState = Literal["closed", "open", "half_open"]
BreakerVerb = Literal["open", "close", "reset"]
Origin = Literal["api", "file", "preset", "default", "env"]
Counts = dict[str, int]


class Response(msgspec.Struct, kw_only=True, rename=camel, forbid_unknown_fields=True):
    """Base of every answer: camelCase keys, every field always present unless typed UnsetType; the
    schema forbids other keys (additionalProperties: false), so an answer cannot grow one unnoticed."""


R = TypeVar("R", bound=Response)


def from_json_dict(cls: type[R], data: dict[str, Any]) -> R:
    """A Struct from a dict keyed by JSON names, values kept as they are (no int -> float conversion)."""
    names = {f.encode_name: f.name for f in msgspec.structs.fields(cls)}
    return cls(**{names[key]: value for key, value in data.items()})


# -- status -------------------------------------------------------------------------------------------
class RoleCounts(Response):
    """Messages of one role: received, forwarded, dropped."""

    received: NNInt
    forwarded: NNInt
    dropped: NNInt


class ByRole(Response):
    """Messages received, forwarded and dropped by protocol role."""

    data: RoleCounts
    request: RoleCounts
    reply: RoleCounts
    control: RoleCounts


class Signals(Response):
    """Each load signal in percent of its limit."""

    memory: float
    cpu: float
    queue: float
    publish_rate: float
    upstream_latency: float
    queue_delay: float
    predicted_queue: float


class Status(Response):
    """The seed's BackpressureMetrics (same names) plus loadPercent, dominantSignal, samplingRate,
    batchSize, upstreamConnected and the accounting counters."""

    current_memory_mb: float
    current_queue_size: NNInt
    current_publish_rate: float
    current_cpu_percent: float
    dropped_messages: NNInt
    sampled_messages: NNInt
    circuit_breaker_open: bool
    degradation_level: LevelName
    degradation_level_value: Annotated[int, Meta(ge=0, le=4)]
    load_percent: float
    dominant_signal: Signal
    sampling_rate: float
    batch_size: Annotated[int, Meta(ge=1)]
    upstream_connected: bool
    upstream_stalled: bool
    flow_paused_clients: NNInt
    received_messages: NNInt
    forwarded_messages: NNInt
    spooled_messages: NNInt
    open_circuit_breakers: NNInt
    max_queue_size: int
    queued_bytes: NNInt
    oldest_queued_age_seconds: float
    dropped_by_reason: Counts
    by_role: ByRole
    refused_requests: Counts
    signals: Signals
    explanation: Annotated[
        str, Meta(description="The level, the signal driving it and the forecast, in one sentence")
    ]
    signal_detail: SignalsSnapshot
    spool_messages: NNInt
    spool_bytes: NNInt
    clients: NNInt
    uptime_seconds: float


class HistoryPoint(Response):
    """One point of the history. `droppedByReason` (cumulative drops by reason at that second) is present
    on the points of the last 5 minutes."""

    timestamp: Timestamp
    current_memory_mb: float
    current_cpu_percent: float
    current_queue_size: int
    current_publish_rate: float
    load_percent: float
    degradation_level: LevelName
    sampling_rate: float
    batch_size: int
    upstream_connected: bool
    received_messages: int
    forwarded_messages: int
    dropped_messages: int
    sampled_messages: int
    spooled_messages: int
    spool_bytes: int
    upstream_rtt_ms: float
    upstream_latency_percent: float
    queue_delay_ms: float
    predicted_queue_percent: float
    queue_seconds_to_full: float
    degradation_level_value: int
    dropped_by_reason: Counts | UnsetType = UNSET


class MetricsHistory(Response):
    """GET /metrics: the current status and the history at the range's step."""

    time_range: Literal["5m", "1h", "24h"]
    step_seconds: int
    fields: list[str]
    current: Status
    history: list[HistoryPoint]


# -- health -------------------------------------------------------------------------------------------
class Health(Response):
    """GET /health: the overall status; always 200 while the process works."""

    status: OverallStatus
    degradation_level: LevelName
    upstream_connected: bool
    shutting_down: bool
    uptime_seconds: float


class Ready(Response):
    """GET /ready: whether the sidecar takes traffic (503 with this as details when not)."""

    ready: bool
    upstream_connected: bool


class UpstreamHealth(Response):
    """The upstream NATS connection: critical after 30 s down, warning while stalled."""

    status: ComponentStatus
    connected: bool
    url: str | None
    server_version: str | None
    server_name: str | None
    max_payload: int
    reconnects: NNInt
    last_error: str | None
    disconnected_seconds: float
    pending_bytes: NNInt
    unconfirmed_bytes: NNInt
    lame_duck: bool
    ack_subscription_denied: bool
    pending_acks: NNInt
    flow_paused_clients: NNInt
    stalled: bool


class QueueHealth(Response):
    """The in-memory queue: warning from 80 % of maxQueueSize, critical at it."""

    status: ComponentStatus
    size: NNInt
    max_size: int
    percent: float
    by_priority: Counts
    bytes: NNInt
    parked: NNInt
    oldest_age_seconds: float


class MemoryHealth(Response):
    """Memory against maxMemoryUsageMB: warning from 80 %, critical at 100 %."""

    status: ComponentStatus
    current_mb: float
    rss_mb: float
    max_mb: float
    percent: float
    cgroup_mb: float | None
    cgroup_limit_mb: float | None


class CpuHealth(Response):
    """CPU against maxCpuUsagePercent: warning from 80 %, critical at 100 %."""

    status: ComponentStatus
    percent: float
    threshold_percent: float
    quota_cores: float | None
    load_percent: float


class BreakersHealth(Response):
    """The circuit breakers: warning while any is open."""

    status: ComponentStatus
    enabled: bool
    open: NNInt
    half_open: NNInt
    tracked: NNInt


class SpoolHealth(Response):
    """The disk spool: warning while it holds messages, critical from 90 % of its bytes."""

    status: ComponentStatus
    max_bytes: int
    enabled: bool
    bytes: NNInt
    messages: NNInt
    oldest_age_seconds: float


class ClientsHealth(Response):
    """Application connections and their pending output."""

    status: ComponentStatus
    connections: NNInt
    max_connections: int
    slow_consumers: NNInt
    pending_bytes: NNInt
    max_total_pending_bytes: int


class ConfigFile(Response):
    """The configuration file as last applied."""

    path: Annotated[str | None, Meta(description="The --config file (null: none)")]
    preset: str | None
    sha256: Annotated[str | None, Meta(description="Hash of the file's bytes as last applied")]
    loaded_at: Timestamp


class LastReload(Response):
    """The last reload of the configuration file."""

    trigger: Annotated[str, Meta(description="SIGHUP or file changed")]
    at: Timestamp
    result: Literal["applied", "refused"]
    errors: list[str]
    changed: list[str]


class ConfigHealth(Response):
    """The configuration file: warning after a refused reload or while a restart is required."""

    status: ComponentStatus
    path: Annotated[str | None, Meta(description="The --config file (null: none)")]
    preset: str | None
    sha256: Annotated[str | None, Meta(description="Hash of the file's bytes as last applied")]
    loaded_at: Timestamp
    last_reload: LastReload | None
    reloads: NNInt
    failed_reloads: NNInt
    restart_required: Annotated[
        list[str], Meta(description="Settings the file changed that take effect only at the next restart")
    ]
    api_overrides: NNInt
    reloadable: Annotated[list[str], Meta(description="What a reload can change without a restart")]


FleetMode = Literal["off", "joining", "shared", "hold", "local"]


class FleetHealth(Response):
    """Fleet membership over JetStream KV (docs/fleet.md): warning while the KV is away; `fallback` while
    the last share is held (mode hold) or the local maxPublishRate applies (mode local)."""

    status: ComponentStatus
    name: str
    mode: FleetMode
    kv_available: bool
    kv_error: Annotated[str | None, Meta(description="Why the KV is unavailable, in words")]
    fallback: bool
    members: NNInt
    rate_ceiling: Annotated[float, Meta(description="The publish-rate ceiling in force (msg/s)")]
    hold_remaining_seconds: float | None


class StreamMonitorStats(Response):
    """The stream monitor's JetStream API requests: sent, answers used, errors, awaiting an answer."""

    requests: NNInt
    answers: NNInt
    errors: NNInt
    in_flight: NNInt


class SignalsHealth(Response):
    """Upstream RTT, queue delay, forecasts and stream fill (docs/signals.md): warning at 100 % of a
    threshold, critical at 150 % or while a full `discard: new` stream refuses publishes."""

    status: ComponentStatus
    explanation: str
    driving_signal: Signal
    streams_refusing_new: list[str]
    monitor: StreamMonitorStats
    detail: SignalsSnapshot


class HealthComponents(Response):
    """Every component of /health/detailed; `config` is present when the app has a RuntimeConfig, `fleet`
    when a `fleet:` section is configured."""

    upstream: UpstreamHealth
    queue: QueueHealth
    memory: MemoryHealth
    cpu: CpuHealth
    breakers: BreakersHealth
    spool: SpoolHealth
    clients: ClientsHealth
    signals: SignalsHealth
    config: ConfigHealth | UnsetType = UNSET
    fleet: FleetHealth | UnsetType = UNSET

    def statuses(self) -> set[str]:
        """The status of every component present."""
        return {c.status for c in msgspec.structs.astuple(self) if c is not UNSET}


class HealthDetailed(Response):
    """GET /health/detailed: the overall status and each component."""

    status: OverallStatus
    degradation_level: LevelName
    load_percent: float
    dominant_signal: Signal
    explanation: str
    shutting_down: bool
    uptime_seconds: float
    components: HealthComponents


# -- configuration ------------------------------------------------------------------------------------
class Override(Response):
    """An API value that differs from the file's."""

    key: str
    value: Any
    file_value: Any


def _config_view() -> type[Response]:
    """Config as GET shows it: every BackpressureConfig key (same types and bounds, all present), then
    the rules and where the values come from. Built from BackpressureConfig so a new key shows up here."""
    keys = [(f.name, f.type) for f in msgspec.structs.fields(BackpressureConfig)]
    names = {f.name: f.encode_name for f in msgspec.structs.fields(BackpressureConfig)}
    extra = [
        ("policies", list[PolicyRule]),
        (
            "sources",
            Annotated[
                dict[str, Origin],
                Meta(
                    description="Where each value comes from: the admin API, the file, the file's preset, "
                    "the default"
                ),
            ],
        ),
        (
            "overrides",
            Annotated[
                list[Override],
                Meta(
                    description="API values that differ from the file: the next reload or restart undoes them"
                ),
            ],
        ),
        ("file", ConfigFile),
    ]
    return msgspec.defstruct(
        "Config",
        keys + extra,
        bases=(Response,),
        kw_only=True,
        rename=names,
        namespace={"__doc__": "The `backpressure` section in force, plus the `policies` rules."},
    )


Config: Final = _config_view()


class ConfigChange(Response):
    """PUT /config and POST /config/reset: the keys changed and the configuration now in force."""

    changed: list[str]
    config: Config  # type: ignore[valid-type]


# -- breakers, load test, actions ---------------------------------------------------------------------
class Breaker(Response):
    """One circuit breaker, with wall-clock times."""

    subject: str
    state: BreakerState
    reason: str | None
    opened_at: Timestamp | None
    failures: NNInt
    next_attempt_at: Timestamp | None
    backoff_ms: NNInt


class Breakers(Response):
    """GET /circuit-breaker/status: every tracked breaker."""

    enabled: bool
    open: NNInt
    half_open: NNInt
    breakers: list[Breaker]


class BreakerResult(Response):
    """POST /circuit-breaker: what the action did and the breaker after it."""

    subject: str
    action: BreakerVerb
    changed: bool
    state: BreakerState
    breaker: Breaker | None


class LatencySummary(Response):
    """Latency percentiles of the delivered messages, in milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float


class LoadTestStatus(Response):
    """The load test: its state, plan, counts and latencies (also the answer of start and stop)."""

    state: Literal["idle", "starting", "running", "draining", "completed", "stopped", "failed"]
    running: bool
    id: str | None
    spec: LoadTestSpec | None
    started_at: Timestamp | None
    finished_at: Timestamp | None
    elapsed_seconds: float
    progress: Annotated[float, Meta(ge=0, le=100)]
    planned_messages: NNInt
    sent: NNInt
    actual_rate: float
    accepted: NNInt
    queued: NNInt
    forwarded: NNInt | None
    dropped: NNInt
    dropped_by_reason: Counts
    blocked: NNInt
    success_rate: float | None
    latency_ms: LatencySummary | None
    measured: bool
    measurement_error: str | None


class Drained(Response):
    """POST /actions/drain-queue: messages forwarded and what is left."""

    forwarded: NNInt
    queue_size: NNInt


class Cleared(Response):
    """POST /actions/clear-queue: messages dropped and what is left."""

    cleared: NNInt
    queue_size: NNInt


# -- analytics ----------------------------------------------------------------------------------------
class Transition(Response):
    """One level change."""

    timestamp: Timestamp
    from_level: LevelName = msgspec.field(name="from")
    to: LevelName
    from_value: int
    to_value: int
    load_percent: float
    dominant_signal: str


class DegradationHistory(Response):
    """GET /analytics/degradation-history: the recent level changes, oldest first."""

    current_level: LevelName
    count: NNInt
    transitions: list[Transition]


class Recommendations(Response):
    """GET /analytics/recommendations: tuning hints from the last window of history."""

    window_seconds: int
    samples: NNInt
    recommendations: list[Recommendation]


# Every answer type, for the OpenAPI generator.
# -- fleet --------------------------------------------------------------------------------------------
class FleetLevel(Response):
    """The fleet-wide degradation level (0-4) over live members: the worst one and the median."""

    max: Annotated[int, Meta(ge=0, le=4)]
    median: Annotated[int, Meta(ge=0, le=4)]


class FleetMemberState(Response):
    """One live member: its last record, how long ago it arrived here, and its share as computed here."""

    id: str
    host: str
    own: Annotated[bool, Meta(description="This sidecar")]
    level: str
    load_percent: float
    dominant_signal: str
    offered_rate: float
    forwarded_rate: float
    queue: NNInt
    spool: NNInt
    version: str
    written_at: Annotated[float, Meta(description="The member's own wall clock at the write (epoch s)")]
    last_seen_seconds_ago: Annotated[float, Meta(description="By this sidecar's clock (liveness)")]
    share: Annotated[float | None, Meta(description="Its share as computed here (null without a budget)")]
    reported_share: Annotated[float | None, Meta(description="The ceiling the member says it applies")]
    reported_mode: str


class FleetCounters(Response):
    """Control traffic and ignored input since start."""

    puts_ok: NNInt
    puts_failed: NNInt
    bytes_out: NNInt
    bytes_in: NNInt
    records_invalid: NNInt
    records_over_limit: NNInt
    members_expired: NNInt


class Fleet(Response):
    """GET /fleet: the fleet as this sidecar sees it; `enabled: false` and nulls without `fleet:`."""

    enabled: bool
    name: str | None = None
    bucket: str | None = None
    member_id: str | None = None
    mode: Annotated[FleetMode, Meta(description="Where the rate ceiling comes from")] = "off"
    kv_available: bool = False
    kv_error: str | None = None
    bucket_ready: bool = False
    budget: Annotated[float | None, Meta(description="fleet.maxPublishRate (null: no budget)")] = None
    share_mode: Literal["equal", "demand"] | None = None
    rate_ceiling: Annotated[float | None, Meta(description="The publish-rate ceiling in force here")] = None
    local_max_publish_rate: float | None = None
    hold_remaining_seconds: float | None = None
    interval_s: float | None = None
    ttl_s: float | None = None
    levels: FleetLevel | None = None
    members: list[FleetMemberState] = []
    counters: FleetCounters | None = None


RESPONSES: Final[tuple[type[Response], ...]] = (
    Status,
    MetricsHistory,
    Health,
    Ready,
    HealthDetailed,
    Config,
    ConfigChange,
    Breakers,
    BreakerResult,
    LoadTestStatus,
    Drained,
    Cleared,
    DegradationHistory,
    Recommendations,
    Fleet,
)
