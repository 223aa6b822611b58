"""Sidecar configuration: one YAML file (JSON is YAML), optional preset base, environment overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml
from msgspec import Meta

from policies.config import BackpressureConfig, Base, PolicyRule
from proxy.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "conf"
PRESET_NAMES = ("default", "production", "development", "high-frequency", "batch-processing")

Milliseconds = Annotated[int, Meta(ge=1, le=3_600_000)]
HostPort = Annotated[str, Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):\d{1,5}$")]


class TlsConfig(Base, frozen=True):
    """TLS towards the upstream NATS server."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


class UpstreamConfig(Base, frozen=True):
    """The real NATS cluster the sidecar forwards to; the sidecar alone holds its credentials."""

    servers: Annotated[list[str], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["nats://127.0.0.1:4222"]
    )
    name: str = "kpi-sidecar"
    creds_file: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    nkey_seed_file: str | None = None
    tls: TlsConfig | None = None
    connect_timeout_ms: Milliseconds = 2_000
    # Stale-connection detection: a PING every pingIntervalMs; maxPingsOut unanswered -> reconnect.
    ping_interval_ms: Milliseconds = 5_000
    max_pings_out: Annotated[int, Meta(ge=1, le=100)] = 2
    reconnect_wait_ms: Milliseconds = 250
    max_reconnect_wait_ms: Milliseconds = 5_000
    # Outbound bytes buffered towards the upstream before the engine stops handing it messages.
    max_pending_bytes: Annotated[int, Meta(ge=65_536)] = 8 * 1024 * 1024
    # Past maxPendingBytes, applications are not read (TCP pushes back on them) for up to flowControlMs;
    # if the socket is still backed up then, they are read again and the engine queues and sheds by level.
    # 0: queue at once.
    flow_control_ms: Annotated[int, Meta(ge=0, le=60_000)] = 200
    # Non-critical publishes written but not yet confirmed by a PONG, kept to be taken back when the
    # connection is declared dead (docs/zero-loss.md); at the limit the upstream counts as backed up.
    max_unconfirmed_bytes: Annotated[int, Meta(ge=65_536)] = 8 * 1024 * 1024


class ListenConfig(Base, frozen=True):
    """Where the sidecar listens: NATS port for applications, HTTP ingest, admin API."""

    nats: HostPort = "127.0.0.1:4222"
    http: HostPort | None = "127.0.0.1:8080"
    admin: HostPort = "0.0.0.0:3000"


class ClientsConfig(Base, frozen=True):
    """Limits and optional local auth for application connections on the NATS port."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    max_connections: Annotated[int, Meta(ge=1)] = 1024
    # Like nats-server's max_pending: a client that stops reading is disconnected past this.
    max_pending_bytes: Annotated[int, Meta(ge=65_536)] = 64 * 1024 * 1024
    # All applications together; past it the one with the most pending is cut first. Default (null): a
    # quarter of backpressure.maxMemoryUsageMB.
    max_total_pending_bytes: Annotated[int, Meta(ge=65_536)] | None = None
    ping_interval_ms: Milliseconds = 120_000
    max_pings_out: Annotated[int, Meta(ge=1, le=100)] = 2


class AdminConfig(Base, frozen=True):
    """Admin API settings; the token may come from KPI_SIDECAR_ADMIN_TOKEN."""

    token: str | None = None
    max_body_bytes: Annotated[int, Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024


class HttpIngestConfig(Base, frozen=True):
    """HTTP ingest port limits."""

    max_body_bytes: Annotated[int, Meta(ge=1024, le=256 * 1024 * 1024)] = 8 * 1024 * 1024
    max_batch_items: Annotated[int, Meta(ge=1, le=100_000)] = 10_000


class MetricsConfig(Base, frozen=True):
    """Prometheus label bounds and the in-memory history ring."""

    max_subjects: Annotated[int, Meta(ge=1, le=100_000)] = 500
    history_seconds: Annotated[int, Meta(ge=60, le=7 * 86_400)] = 86_400


class SpoolConfig(Base, frozen=True):
    """Disk spool for critical messages that cannot stay in memory."""

    path: str | None = "/var/lib/kpi-sidecar/spool"
    max_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024 * 1024
    # Critical messages go to disk once the upstream has been down this long.
    upstream_down_threshold_ms: Milliseconds = 5_000
    # Unconfirmed critical messages older than this are resent.
    ack_timeout_ms: Milliseconds = 5_000
    # `delivery: jetstream` messages awaiting their PubAck; at the limit new messages wait in the queue.
    max_pending_acks: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000


class ShutdownConfig(Base, frozen=True):
    """SIGTERM drain: forward what can be forwarded within the grace, then exit 0."""

    grace_ms: Annotated[int, Meta(ge=0, le=600_000)] = 25_000


class SidecarConfig(Base, frozen=True):
    """The whole sidecar configuration file."""

    preset: str | None = None
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig)
    listen: ListenConfig = msgspec.field(default_factory=ListenConfig)
    clients: ClientsConfig = msgspec.field(default_factory=ClientsConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    http: HttpIngestConfig = msgspec.field(default_factory=HttpIngestConfig)
    backpressure: BackpressureConfig = msgspec.field(default_factory=BackpressureConfig)
    policies: list[PolicyRule] = msgspec.field(default_factory=list)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    shutdown: ShutdownConfig = msgspec.field(default_factory=ShutdownConfig)


# Secrets come from the environment so they need not sit in a ConfigMap.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "KPI_SIDECAR_ADMIN_TOKEN": ("admin", "token"),
    "KPI_SIDECAR_UPSTREAM_TOKEN": ("upstream", "token"),
    "KPI_SIDECAR_UPSTREAM_USER": ("upstream", "user"),
    "KPI_SIDECAR_UPSTREAM_PASSWORD": ("upstream", "password"),
    "KPI_SIDECAR_UPSTREAM_CREDS_FILE": ("upstream", "credsFile"),
    "KPI_SIDECAR_UPSTREAM_NKEY_SEED_FILE": ("upstream", "nkeySeedFile"),
    "KPI_SIDECAR_CLIENT_TOKEN": ("clients", "token"),
}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `override` into `base`: mappings recursively, everything else (lists too) replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; a parse error or a non-mapping top level is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: $: expected a mapping at the top level, got {type(data).__name__}")
    return data


def preset_data(name: str) -> dict[str, Any]:
    """The raw mapping of a preset in conf/ (`default`, `production`, ...)."""
    if name not in PRESET_NAMES:
        raise ConfigError(f"$.preset: unknown preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
    data = read_yaml(PRESETS_DIR / f"{name}.yaml")
    data.pop("preset", None)
    return data


def collect_errors(data: Any, typ: Any, path: str = "$") -> list[str]:
    """Every validation error of `data` against `typ`, each with its `$.path` (msgspec stops at one)."""
    struct_type = _struct_type(typ)
    if struct_type is not None and isinstance(data, dict):
        errors: list[str] = []
        fields = {f.encode_name: f for f in msgspec.structs.fields(struct_type)}
        for key, value in data.items():
            field = fields.get(key)
            if field is None:
                errors.append(f"{path}: unknown field {key!r}")
            else:
                errors.extend(collect_errors(value, field.type, f"{path}.{key}"))
        if not errors:
            errors.extend(_convert_error(data, typ, path))
        return errors
    item_type = _list_item_struct(typ)
    if item_type is not None and isinstance(data, list):
        errors = []
        for i, item in enumerate(data):
            errors.extend(collect_errors(item, item_type, f"{path}[{i}]"))
        return errors
    return _convert_error(data, typ, path)


def _convert_error(data: Any, typ: Any, path: str) -> list[str]:
    try:
        msgspec.convert(data, typ)
    except msgspec.ValidationError as err:
        message = str(err)
        # msgspec words errors as "... - at `$.x`"; re-root that path under ours.
        if " - at `$" in message:
            text, _, where = message.partition(" - at `$")
            return [f"{path}{where.rstrip('`')}: {text}"]
        return [f"{path}: {message}"]
    return []


def _struct_type(typ: Any) -> type | None:
    for candidate in (typ, *getattr(typ, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, msgspec.Struct):
            return candidate
    return None


def _list_item_struct(typ: Any) -> type | None:
    if getattr(typ, "__origin__", None) is list:
        return _struct_type(typ.__args__[0])
    return None


def build_config(
    data: Mapping[str, Any], *, preset: str | None = None, env: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Validate a raw mapping (over its preset, under env overrides) into a SidecarConfig."""
    name = preset or data.get("preset")
    merged: dict[str, Any] = dict(data)
    if name is not None:
        if not isinstance(name, str):
            raise ConfigError("$.preset: expected a string")
        merged = deep_merge(preset_data(name), data)
        merged["preset"] = name
    for var, (section, key) in ENV_OVERRIDES.items():
        value = (env if env is not None else os.environ).get(var)
        if value:
            section_data = merged.get(section)
            merged[section] = {**(section_data if isinstance(section_data, dict) else {}), key: value}
    errors = collect_errors(merged, SidecarConfig)
    if errors:
        raise ConfigError("invalid configuration", errors)
    return msgspec.convert(merged, SidecarConfig)


def load_config(path: str | Path | None, *, preset: str | None = None) -> SidecarConfig:
    """Load and validate a configuration file; every error names the file and its `$.path`."""
    data = read_yaml(Path(path)) if path is not None else {}
    try:
        return build_config(data, preset=preset)
    except ConfigError as err:
        where = str(path) if path is not None else "<defaults>"
        raise ConfigError(f"{where}: {err}", [f"{where}: {e}" for e in err.errors]) from None


def to_builtins(config: SidecarConfig) -> dict[str, Any]:
    """The configuration as plain data with camelCase keys (secrets are the caller's to redact)."""
    return msgspec.to_builtins(config)


def redacted(config: SidecarConfig) -> dict[str, Any]:
    """The configuration as plain data with every secret replaced by "***"."""
    data = to_builtins(config)
    for section, key in ENV_OVERRIDES.values():
        if data.get(section, {}).get(key):
            data[section][key] = "***"
    if data.get("clients", {}).get("password"):
        data["clients"]["password"] = "***"
    return data
