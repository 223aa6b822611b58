"""Sidecar configuration: one YAML file (JSON is YAML), optional preset base, environment overrides.

Every error names the file, the line and the `$.path`, in words: `config.yaml:4: $.listen.nats: port 99999
is out of range: use 1-65535, or 0 for any free port`. Values msgspec's types cannot express (addresses,
URLs, paths) are checked by FIELD_CHECKS, both when a file is loaded and when a struct is built in code.

Size: the schema is read as one document: each Struct is a section of the YAML, with its checks beside it
and the loading (presets, layers, environment) right after, so a reader never hunts for a field's rule.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from policies.config import BackpressureConfig, Base, PolicyRule
from policies.fleet import FleetConfig
from proxy.config.source import ConfigSource, parse_source, read_source
from proxy.errors import ConfigError

PRESETS_DIR = Path(__file__).resolve().parents[2] / "conf"
PRESET_NAMES = ("default", "production", "development", "high-frequency", "batch-processing")

Milliseconds = Annotated[int, Meta(ge=1, le=3_600_000)]
# HOST:PORT, checked by listen_address_error (msgspec's pattern errors are not words a user understands).
HostPort = str
# Upstream URL schemes the sidecar speaks: plain TCP (TLS when the server asks for it) and TLS only.
# nats.go, nats.js and nats-py also take ws:// and wss://, which the sidecar refuses: it does not speak
# NATS over WebSocket towards the upstream.
UPSTREAM_SCHEMES = ("nats", "tls")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def listen_address_error(value: str) -> str | None:
    """Why `value` is not a HOST:PORT to listen on (port 0: any free port), or None."""
    host, sep, port = value.rpartition(":")
    example = "HOST:PORT such as 127.0.0.1:4222"
    if not sep:
        return f"expected {example}, got {value!r}"
    if not port.isdigit():
        return f"the port of {value!r} is not a number: expected {example}"
    number = int(port)
    if number > 65535:
        return f"port {number} is out of range: use 1-65535, or 0 for any free port"
    return _host_error(host, value, example)


def _host_error(host: str, value: str, example: str) -> str | None:
    if host.startswith("[") or host.endswith("]"):
        try:
            ipaddress.IPv6Address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            return f"{host!r} in {value!r} is not an IPv6 address in brackets (e.g. [::1]:4222)"
        return None
    if ":" in host:
        return f"write an IPv6 address in brackets, e.g. [{host}]:{value.rpartition(':')[2]}"
    if host and not _HOSTNAME.match(host):
        return f"{host!r} in {value!r} is not a host name or IP address: expected {example}"
    return None


def upstream_url_error(url: str) -> str | None:
    """Why `url` is not an upstream server the sidecar can connect to, or None."""
    if not url.strip():
        return "an empty server URL: expected nats://HOST:PORT"
    scheme = url.partition("://")[0].lower() if "://" in url else "nats"
    if scheme in ("ws", "wss"):
        return (
            f"{scheme}:// (NATS over WebSocket) is not supported towards the upstream: use the server's "
            "client port with nats:// or tls:// (4222 by default)"
        )
    if scheme not in UPSTREAM_SCHEMES:
        return f"{scheme}:// is not a NATS URL: use nats://HOST:PORT or tls://HOST:PORT"
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if not parts.hostname:
        return f"{url!r} names no host: expected {scheme}://HOST:PORT"
    try:
        port = parts.port
    except ValueError:
        return f"the port of {url!r} is not a number in 1-65535"
    if port == 0:
        return f"port 0 in {url!r}: an upstream server needs its real port (4222 by default)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{url!r} has a path or query; a NATS URL is only {scheme}://[USER:PASS@]HOST[:PORT]"
    return None


def path_error(value: str) -> str | None:
    """Why `value` is not usable as a file or directory path, or None."""
    if not value.strip():
        return "an empty path: write a path (or leave the key out)"
    if "\x00" in value:
        return "a path cannot contain a NUL character"
    return None


def spool_path_error(value: str) -> str | None:
    """Why `value` is not a spool directory, or None (null, not "", disables the spool)."""
    if not value.strip():
        return "an empty path: write the spool's directory, or null to run without a disk spool"
    return path_error(value)


# Struct -> python field name -> check of its value: a list of (sub-path, message), empty when valid.
FieldCheck = Callable[[Any], list[tuple[str, str]]]


def _one(check: Callable[[str], str | None]) -> FieldCheck:
    def run(value: Any) -> list[tuple[str, str]]:
        if not isinstance(value, str):
            return []
        error = check(value)
        return [] if error is None else [("", error)]

    return run


def _each(check: Callable[[str], str | None]) -> FieldCheck:
    def run(value: Any) -> list[tuple[str, str]]:
        if not isinstance(value, list):
            return []
        out = []
        for index, item in enumerate(value):
            error = check(item) if isinstance(item, str) else None
            if error is not None:
                out.append((f"[{index}]", error))
        return out

    return run


def _checked(struct: Any) -> None:
    """__post_init__ of the structs in FIELD_CHECKS: a struct built in code is held to the same rules."""
    for name, check in FIELD_CHECKS.get(type(struct), {}).items():
        for sub, message in check(getattr(struct, name)):
            raise ValueError(f"{name}{sub}: {message}")
    cross = CROSS_CHECKS.get(type(struct))
    if cross is not None:
        for sub, message in cross(struct):
            raise ValueError(f"{sub.lstrip('.')}: {message}")


class TlsConfig(Base, frozen=True):
    """TLS towards the upstream NATS server."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    def __post_init__(self) -> None:
        _checked(self)


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

    def __post_init__(self) -> None:
        _checked(self)


class ListenConfig(Base, frozen=True):
    """Where the sidecar listens: NATS port for applications, HTTP ingest, admin API (HOST:PORT each).

    Port 0 means "any free port" (the ports are then logged and written to `run --ports-file`); an empty
    host means every interface. These cannot change without a restart.
    """

    nats: HostPort = "127.0.0.1:4222"
    http: HostPort | None = "127.0.0.1:8080"
    admin: HostPort = "0.0.0.0:3000"

    def __post_init__(self) -> None:
        _checked(self)


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
    # Like nats-server's max_subscriptions (unlimited there): past it a SUB gets
    # -ERR 'maximum subscriptions exceeded' and is ignored, the connection stays.
    max_subscriptions: Annotated[int, Meta(ge=1)] = 65_536
    # All applications together (each costs the sidecar a few hundred bytes).
    max_total_subscriptions: Annotated[int, Meta(ge=1)] = 1_000_000


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
    """Disk spool for critical messages that cannot stay in memory; `path: null` disables it."""

    path: str | None = "/var/lib/kpi-sidecar/spool"
    max_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024 * 1024
    # Critical messages go to disk once the upstream has been down this long.
    upstream_down_threshold_ms: Milliseconds = 5_000
    # Unconfirmed critical messages older than this are resent.
    ack_timeout_ms: Milliseconds = 5_000
    # `delivery: jetstream` messages awaiting their PubAck; at the limit new messages wait in the queue.
    max_pending_acks: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000

    def __post_init__(self) -> None:
        _checked(self)


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
    # Fleet coordination over JetStream KV (docs/fleet.md); null: this sidecar decides alone.
    fleet: FleetConfig | None = None


def _listen_ports(listen: ListenConfig) -> list[tuple[str, str]]:
    """Two listeners on the same fixed port of the same host cannot both bind."""
    taken: dict[tuple[str, int], str] = {}
    out = []
    for name in ("nats", "http", "admin"):
        value = getattr(listen, name)
        if value is None or listen_address_error(value) is not None:
            continue
        host, _, port = value.rpartition(":")
        key = (host.strip("[]") or "0.0.0.0", int(port))
        if key[1] == 0:
            continue
        if key in taken:
            out.append(
                (f".{name}", f"port {key[1]} is already listen.{taken[key]}'s: each port needs its own")
            )
        else:
            taken[key] = name
    return out


FIELD_CHECKS: dict[type, dict[str, FieldCheck]] = {
    ListenConfig: {
        "nats": _one(listen_address_error),
        "http": _one(listen_address_error),
        "admin": _one(listen_address_error),
    },
    UpstreamConfig: {
        "servers": _each(upstream_url_error),
        "creds_file": _one(path_error),
        "nkey_seed_file": _one(path_error),
    },
    TlsConfig: {"ca_file": _one(path_error), "cert_file": _one(path_error), "key_file": _one(path_error)},
    SpoolConfig: {"path": _one(spool_path_error)},
}
# Rules across the fields of one struct, checked once each field is valid: (sub-path, message).
CROSS_CHECKS: dict[type, Callable[[Any], list[tuple[str, str]]]] = {ListenConfig: _listen_ports}


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
    """Read one YAML mapping; a parse error, a duplicate key or a non-mapping top level is a ConfigError."""
    return read_source(path).data


def preset_data(name: str) -> dict[str, Any]:
    """The raw mapping of a preset in conf/ (`default`, `production`, ...)."""
    if name not in PRESET_NAMES:
        raise ConfigError(f"$.preset: unknown preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
    data = read_yaml(PRESETS_DIR / f"{name}.yaml")
    data.pop("preset", None)
    return data


class Problem(msgspec.Struct, frozen=True):
    """One validation error: where (`$.listen.nats`) and what, in words."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def collect_errors(data: Any, typ: Any, path: str = "$") -> list[str]:
    """Every validation error of `data` against `typ`, each as `$.path: message` (msgspec stops at one)."""
    return [str(problem) for problem in collect_problems(data, typ, path)]


def collect_problems(data: Any, typ: Any, path: str = "$") -> list[Problem]:
    """Every validation error of `data` against `typ`, each with its `$.path`."""
    struct_type = _struct_type(typ)
    if struct_type is not None and isinstance(data, dict):
        problems: list[Problem] = []
        fields = {f.encode_name: f for f in msgspec.structs.fields(struct_type)}
        checks = FIELD_CHECKS.get(struct_type, {})
        for key, value in data.items():
            field_info = fields.get(key)
            if field_info is None:
                problems.append(Problem(f"{path}.{key}", _unknown_key(key, list(fields))))
                continue
            found = collect_problems(value, field_info.type, f"{path}.{key}")
            check = checks.get(field_info.name)
            if not found and check is not None:
                found = [Problem(f"{path}.{key}{sub}", message) for sub, message in check(value)]
            problems.extend(found)
        if not problems and struct_type in CROSS_CHECKS:
            values = _field_values(struct_type, data)
            problems.extend(Problem(f"{path}{sub}", msg) for sub, msg in CROSS_CHECKS[struct_type](values))
        if not problems:
            problems.extend(_convert_problems(data, typ, path))
        return problems
    item_type = _list_item_struct(typ)
    if item_type is not None and isinstance(data, list):
        problems = []
        for i, item in enumerate(data):
            problems.extend(collect_problems(item, item_type, f"{path}[{i}]"))
        return problems or _convert_problems(data, typ, path)
    return _convert_problems(data, typ, path)


def _field_values(struct_type: type, data: dict[str, Any]) -> SimpleNamespace:
    """The fields of a (field-valid) mapping by python name, defaults filled in, for CROSS_CHECKS."""
    values = {}
    for info in msgspec.structs.fields(struct_type):
        if info.encode_name in data:
            values[info.name] = data[info.encode_name]
        elif info.default is not msgspec.NODEFAULT:
            values[info.name] = info.default
        elif info.default_factory is not msgspec.NODEFAULT:
            values[info.name] = info.default_factory()
    return SimpleNamespace(**values)


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
    return f"unknown key {key!r}{hint}"


def _convert_problems(data: Any, typ: Any, path: str) -> list[Problem]:
    try:
        msgspec.convert(data, typ)
    except msgspec.ValidationError as err:
        message = str(err)
        where = path
        # msgspec words errors as "... - at `$.x`"; re-root that path under ours.
        if " - at `$" in message:
            message, _, sub = message.partition(" - at `$")
            where = f"{path}{sub.rstrip('`')}"
        value = _value_at(data, where[len(path) :])
        return [Problem(where, humanize(message, value, _leaf_type(typ, where[len(path) :])))]
    return []


_MISSING = object()


def _value_at(data: Any, sub: str) -> Any:
    """The value at a msgspec sub-path such as `.a[0].b` inside `data` (_MISSING when absent)."""
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", sub):
        try:
            data = data[name] if name else data[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return data


def _leaf_type(typ: Any, sub: str) -> Any:
    """The declared type at a sub-path, as far as it can be followed (for enum choices)."""
    for name, _index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", sub):
        struct = _struct_type(typ)
        if name and struct is not None:
            match = [f.type for f in msgspec.structs.fields(struct) if f.encode_name == name]
            if not match:
                return None
            typ = match[0]
        elif not name and getattr(typ, "__origin__", None) is list:
            typ = typ.__args__[0]
    return typ


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _words(types: str) -> str:
    return " or ".join(_TYPE_WORDS.get(t.strip(), f"`{t.strip()}`") for t in types.split("|"))


def humanize(message: str, value: Any = _MISSING, typ: Any = None) -> str:
    """msgspec's wording ("Expected `int` >= 1") in a user's words, with the value that was given."""
    got = "" if value is _MISSING or isinstance(value, dict | list) else f" (got {value!r})"
    if match := re.fullmatch(r"Expected `(.+?)`, got `(.+?)`", message):
        given = repr(value) if got else _words(match[2])
        return f"expected {_words(match[1])}, got {given}"
    if match := re.fullmatch(r"Expected `(?:int|float)` (>=|>|<=|<) (.+)", message):
        bound = match[2].removesuffix(".0")
        verb = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}[match[1]]
        return f"must be {verb} {bound}{got}"
    if match := re.fullmatch(r"Expected `array` of length >= (\d+)", message):
        return f"needs at least {match[1]} item{'s' if match[1] != '1' else ''}"
    if match := re.fullmatch(r"Expected `str` of length (>=|<=) (\d+)", message):
        return "must not be empty" if match[2] == "1" else f"length must be {match[1]} {match[2]}{got}"
    if match := re.fullmatch(r"Expected `str` matching regex '\^\(([\w|-]+)\)\$'", message):
        return f"must be one of {', '.join(match[1].split('|'))}{got}"
    if match := re.fullmatch(r"Object missing required field `(.+)`", message):
        return f"missing required key {match[1]!r}"
    if message.startswith("Invalid enum value"):
        choices = _enum_choices(typ)
        return (
            f"must be one of {', '.join(choices)}{got}" if choices else f"{message[0].lower()}{message[1:]}"
        )
    return message


def _enum_choices(typ: Any) -> list[str]:
    for candidate in (typ, *getattr(typ, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return [str(member.value) for member in candidate]
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


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and the layers it was built from, for `GET /config`'s sources."""

    config: SidecarConfig
    source: ConfigSource | None = None
    preset: str | None = None
    preset_data: dict[str, Any] = field(default_factory=dict)
    env_paths: frozenset[tuple[str, ...]] = frozenset()

    def origin(self, *keys: str) -> str:
        """Where the value at `keys` (camelCase) came from: env, file, preset or default."""
        if keys in self.env_paths:
            return "env"
        if self.source is not None and _has(self.source.data, keys):
            return "file"
        if _has(self.preset_data, keys):
            return "preset"
        return "default"


def _has(data: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def build_layers(
    data: Mapping[str, Any],
    *,
    preset: str | None = None,
    env: Mapping[str, str] | None = None,
    source: ConfigSource | None = None,
) -> LoadedConfig:
    """Validate a raw mapping (over its preset, under env overrides) into a LoadedConfig."""
    name = preset or data.get("preset")
    merged: dict[str, Any] = dict(data)
    base: dict[str, Any] = {}
    if name is not None:
        if not isinstance(name, str):
            raise ConfigError("$.preset: expected a string", ["$.preset: expected a string"])
        base = preset_data(name)
        merged = deep_merge(base, data)
        merged["preset"] = name
    env_paths = set()
    for var, (section, key) in ENV_OVERRIDES.items():
        value = (env if env is not None else os.environ).get(var)
        if value:
            section_data = merged.get(section)
            merged[section] = {**(section_data if isinstance(section_data, dict) else {}), key: value}
            env_paths.add((section, key))
    problems = collect_problems(merged, SidecarConfig)
    if problems:
        if source is not None:
            # In the file's order, whatever the order of the sections in the merged mapping.
            problems.sort(key=lambda p: source.line_of(p.path) or 0)
        errors = [f"{source.where(p.path)}: {p}" if source is not None else str(p) for p in problems]
        raise ConfigError("invalid configuration", errors)
    config = msgspec.convert(merged, SidecarConfig)
    return LoadedConfig(config, source, name, base, frozenset(env_paths))


def build_config(
    data: Mapping[str, Any], *, preset: str | None = None, env: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Validate a raw mapping (over its preset, under env overrides) into a SidecarConfig."""
    return build_layers(data, preset=preset, env=env).config


def load_layers(
    path: str | Path | None, *, preset: str | None = None, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Load and validate a configuration file; every error names the file, its line and its `$.path`."""
    if path is None:
        return build_layers({}, preset=preset, env=env)
    source = read_source(Path(path))
    try:
        return build_layers(source.data, preset=preset, env=env, source=source)
    except ConfigError as err:
        errors = [e if e.startswith(source.name) else f"{source.where('$.preset')}: {e}" for e in err.errors]
        raise ConfigError(f"{source.name}: {err}", errors) from None


def load_config(path: str | Path | None, *, preset: str | None = None) -> SidecarConfig:
    """Load and validate a configuration file; every error names the file, its line and its `$.path`."""
    return load_layers(path, preset=preset).config


def parse_config_text(text: str, name: str = "<config>") -> LoadedConfig:
    """Validate configuration text as if it were the file `name` (tests, `check-config -`)."""
    source = parse_source(text, name)
    return build_layers(source.data, source=source)


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
