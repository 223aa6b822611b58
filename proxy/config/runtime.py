"""The configuration in force: applied from the file at start, on reload (SIGHUP, file change), by the API.

One object owns every change of the running configuration, so that the file, the admin API and what the
engine uses cannot disagree unseen:

- `reload(trigger)` re-reads the file, validates it and applies it at once, or keeps the running
  configuration and records why (log line, metrics, `/health/detailed`). The file wins: values changed
  through the API are dropped (a restart would drop them too), and the log line names them.
- `apply_api(...)` is `PUT /config`; `sources()` says where each value comes from (file, preset, default,
  api) and `overrides()` which API values the next reload or restart would undo.
- Only the settings in RELOADABLE change at run time; a file that changes anything else (ports, upstream,
  credentials, spool location, ...) is applied for the rest and reported as needing a restart.

The file is watched by polling (`watch()`): Kubernetes updates a mounted ConfigMap by swapping the
`..data` symlink of the volume, which inotify on the file itself would not see; one `stat()` per
interval catches it, and the content hash decides whether anything changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from policies.config import BackpressureConfig, PolicyRule
from proxy.admin.history import iso_timestamp
from proxy.config.schema import LoadedConfig, SidecarConfig, load_layers, to_builtins
from proxy.errors import ConfigError

if TYPE_CHECKING:
    from proxy.sidecar import Sidecar

log = logging.getLogger(__name__)

WATCH_INTERVAL_S: Final = 1.0
# What may change without a restart: these are read where they are used (or handed to the engine's
# update_config); everything else is bound at start (sockets, the upstream connection, the spool file,
# the admin app's token and limits, metric label budgets).
RELOADABLE: Final[tuple[str, ...]] = (
    "preset",
    "backpressure",
    "policies",
    "shutdown.graceMs",
    "clients.maxConnections",
    "clients.maxPendingBytes",
    "clients.maxPingsOut",
    "clients.maxSubscriptions",
    "clients.maxTotalSubscriptions",
    "spool.upstreamDownThresholdMs",
    "spool.ackTimeoutMs",
    "spool.maxPendingAcks",
    "http.maxBatchItems",
    # Read by proxy/fleet at each step; name, bucket, memberId and ttlS (the max_age) need a restart.
    "fleet.maxPublishRate",
    "fleet.intervalS",
    "fleet.shareMode",
    "fleet.minShare",
    "fleet.holdS",
)
MAX_LOGGED_ERRORS: Final = 5


def reloadable(path: str) -> bool:
    """Whether the setting at a dotted path (`backpressure.maxQueueSize`) changes without a restart."""
    return any(path == prefix or path.startswith(prefix + ".") for prefix in RELOADABLE)


def leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every setting; lists (servers, policies) are one value each."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, data


def _section(path: str, *sides: dict[str, Any]) -> str:
    """`upstream.tls` for `upstream.tls.caFile` when one side has no tls section at all."""
    parts = path.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        if any(prefix in side for side in sides):
            return prefix
    return path


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if node is None:
            return  # a section absent at start (fleet: null): adding it is a restart, reported as such
    node[last] = value


class ReloadResult(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What one reload did: applied (with what changed) or refused (with why)."""

    trigger: str
    at: float
    ok: bool
    changed: list[str] = []
    dropped_overrides: list[str] = []
    restart_required: list[str] = []
    errors: list[str] = []


class RuntimeConfig:
    """The running configuration's owner: file state, API overrides, reloads and their outcome."""

    def __init__(
        self,
        sidecar: Sidecar,
        loaded: LoadedConfig,
        *,
        path: str | Path | None = None,
        preset: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.sidecar = sidecar
        self.path = Path(path) if path is not None else None
        self.preset = preset
        self.loaded = loaded
        self._wall = wall
        # Bound at start: a later file can change these only through a restart.
        self.started = sidecar.config
        self.loaded_at = wall()
        self.api_keys: set[str] = set()
        self.reloads = 0
        self.failures = 0
        self.last: ReloadResult | None = None
        self.restart_required: list[str] = []
        self._stamp = self._file_stamp()
        # The content last tried (applied or refused): an invalid file is reported once, not every poll.
        self._tried_sha = loaded.source.sha256 if loaded.source is not None else None

    # -- API ----------------------------------------------------------------------------------------------
    def apply_api(
        self, config: BackpressureConfig, rules: list[PolicyRule] | None, changed: list[str]
    ) -> None:
        """PUT /config: hand a validated change to the engine at once, and remember it came from the API."""
        self._apply(config, rules)
        self.api_keys.update(changed)
        log.warning(
            "configuration changed through the admin API: %s (the file's values return at the next "
            "reload or restart)",
            ", ".join(changed) or "nothing",
        )

    def reset(self) -> None:
        """POST /config/reset: back to the file's values (as last loaded), API changes forgotten."""
        file_config = self.loaded.config
        self._apply(file_config.backpressure, list(file_config.policies))
        self.api_keys.clear()
        log.warning("configuration reset through the admin API to the file's values")

    def _apply(self, config: BackpressureConfig, rules: list[PolicyRule] | None) -> None:
        sidecar = self.sidecar
        sidecar.engine.update_config(config, rules, now=sidecar.clock())
        policies = rules if rules is not None else sidecar.config.policies
        sidecar.config = msgspec.structs.replace(sidecar.config, backpressure=config, policies=list(policies))
        sidecar.confirmations.sync_ack_subscription()  # a `delivery: jetstream` rule added or removed

    # -- reload -------------------------------------------------------------------------------------------
    def reload(self, trigger: str) -> ReloadResult | None:
        """Re-read the file and apply it, or keep the running configuration and record why.
        None when there is no file to re-read (started without --config): nothing to do, nothing failed."""
        now = self._wall()
        if self.path is None:
            log.warning(
                "configuration reload (%s) ignored: the sidecar was started without --config", trigger
            )
            return None
        try:
            loaded = load_layers(self.path, preset=self.preset)
        except ConfigError as err:
            return self._refused(trigger, now, err.errors)
        finally:
            self._stamp = self._file_stamp()
        if loaded.source is not None:
            self._tried_sha = loaded.source.sha256
        running = to_builtins(self.sidecar.config)
        new = dict(leaves(to_builtins(loaded.config)))
        started = dict(leaves(to_builtins(self.started)))
        applied = to_builtins(self.sidecar.config)
        for path, value in new.items():
            if reloadable(path):
                _set(applied, path, value)
        # Both ways: a section removed from the file (tls: ... -> nothing) is a change too, named once.
        restart = sorted(
            {
                _section(path, started, new)
                for path in started.keys() | new.keys()
                if not reloadable(path) and started.get(path) != new.get(path)
            }
        )
        try:
            target = msgspec.convert(applied, SidecarConfig)
            self.sidecar.engine.update_config(
                target.backpressure, list(target.policies), now=self.sidecar.clock()
            )
        except (msgspec.ValidationError, ValueError) as err:
            return self._refused(trigger, now, [f"{self.path}: cannot apply: {err}"])
        dropped = sorted(key for key in self.api_keys if self._differs_from(loaded, key))
        self.sidecar.config = target
        self.sidecar.confirmations.sync_ack_subscription()
        old = dict(leaves(running))
        changed = [path for path, value in leaves(applied) if reloadable(path) and old.get(path) != value]
        self.api_keys.clear()
        self.loaded = loaded
        self.loaded_at = now
        self.restart_required = restart
        self.reloads += 1
        result = ReloadResult(
            trigger=trigger,
            at=now,
            ok=True,
            changed=changed,
            dropped_overrides=dropped,
            restart_required=restart,
        )
        self.last = result
        self._log_applied(result, old, dict(leaves(applied)))
        return result

    def _refused(self, trigger: str, now: float, errors: list[str]) -> ReloadResult:
        self.failures += 1
        result = ReloadResult(trigger=trigger, at=now, ok=False, errors=list(errors))
        self.last = result
        shown = "; ".join(errors[:MAX_LOGGED_ERRORS])
        more = f" (and {len(errors) - MAX_LOGGED_ERRORS} more)" if len(errors) > MAX_LOGGED_ERRORS else ""
        log.error(
            "configuration reload (%s) refused, the running configuration is kept: %s%s", trigger, shown, more
        )
        return result

    def _log_applied(self, result: ReloadResult, old: dict[str, Any], new: dict[str, Any]) -> None:
        parts = []
        for path in result.changed:
            if path == "policies":
                parts.append(f"policies ({len(old.get(path) or [])} -> {len(new.get(path) or [])} rules)")
            else:
                parts.append(f"{path} {old.get(path)!r} -> {new.get(path)!r}")
        text = ", ".join(parts) or "nothing changed"
        if result.dropped_overrides:
            text += (
                f"; values set through the API replaced by the file's: {', '.join(result.dropped_overrides)}"
            )
        if result.restart_required:
            text += f"; needs a restart to take effect: {', '.join(result.restart_required)}"
        log.warning("configuration reloaded (%s): %s", result.trigger, text)

    def _differs_from(self, loaded: LoadedConfig, key: str) -> bool:
        running = self._value(self.sidecar.config, key)
        return running != self._value(loaded.config, key)

    @staticmethod
    def _value(config: SidecarConfig, key: str) -> Any:
        if key == "policies":
            return msgspec.to_builtins(list(config.policies))
        return msgspec.to_builtins(config.backpressure).get(key)

    # -- file watch ---------------------------------------------------------------------------------------
    def _file_stamp(self) -> tuple[Any, ...] | None:
        """What changes when the file is edited, replaced, or its Kubernetes `..data` symlink swapped."""
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
            real = os.path.realpath(self.path)
        except OSError as err:
            return ("missing", err.errno)
        return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def poll(self) -> ReloadResult | None:
        """Reload when the file changed since the last look (its content, not merely its time)."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        assert self.path is not None
        try:
            sha = hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            sha = None
        if sha is not None and sha == self._tried_sha:
            return None
        self._tried_sha = sha
        return self.reload("file changed")

    async def watch(self, interval: float = WATCH_INTERVAL_S) -> None:
        """Poll the file every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.poll()
            except Exception:
                # The watcher must outlive any surprise; the running configuration stays as it is.
                log.exception("configuration file watch failed")

    # -- reading ------------------------------------------------------------------------------------------
    def sources(self) -> dict[str, str]:
        """Where each value of GET /config comes from: api, file, preset or default (env for secrets)."""
        out = {}
        for info in msgspec.structs.fields(BackpressureConfig):
            key = info.encode_name
            out[key] = "api" if key in self.api_keys else self.loaded.origin("backpressure", key)
        out["policies"] = "api" if "policies" in self.api_keys else self.loaded.origin("policies")
        return out

    def overrides(self) -> list[dict[str, Any]]:
        """Values set through the API that differ from the file's: the next reload or restart undoes them."""
        return [
            {
                "key": key,
                "value": self._value(self.sidecar.config, key),
                "fileValue": self._value(self.loaded.config, key),
            }
            for key in sorted(self.api_keys)
            if self._differs_from(self.loaded, key)
        ]

    def file_state(self) -> dict[str, Any]:
        """The file as last applied: path, preset, content hash, when."""
        source = self.loaded.source
        return {
            "path": str(self.path) if self.path is not None else None,
            "preset": self.loaded.preset,
            "sha256": source.sha256 if source is not None else None,
            "loadedAt": iso_timestamp(self.loaded_at),
        }

    def health(self) -> dict[str, Any]:
        """The `config` component of /health/detailed: warning after a refused reload or a pending restart."""
        last = self.last
        refused = last is not None and not last.ok
        return {
            "status": "warning" if refused or self.restart_required else "ok",
            **self.file_state(),
            "lastReload": None
            if last is None
            else {
                "trigger": last.trigger,
                "at": iso_timestamp(last.at),
                "result": "applied" if last.ok else "refused",
                "errors": last.errors,
                "changed": last.changed,
            },
            "reloads": self.reloads,
            "failedReloads": self.failures,
            "restartRequired": self.restart_required,
            "apiOverrides": len(self.overrides()),
            "reloadable": list(RELOADABLE),
        }


class ConfigCollector:
    """Prometheus families of the configuration's state (kpi_sidecar_config_*), read at scrape time."""

    def __init__(self, runtime: RuntimeConfig) -> None:
        self.runtime = runtime

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.runtime)

    @staticmethod
    def _families(runtime: RuntimeConfig | None) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "kpi_sidecar_config_reloads",
            "Configuration reloads (SIGHUP or file change), by result: applied or refused.",
            labels=["result"],
        )
        gauges = [
            GaugeMetricFamily(
                "kpi_sidecar_config_reload_successful",
                "0 when the last reload was refused (the running configuration is not the file's), else 1.",
            ),
            GaugeMetricFamily(
                "kpi_sidecar_config_reload_timestamp_seconds",
                "When the file's configuration was last applied (start or reload), in epoch seconds.",
            ),
            GaugeMetricFamily(
                "kpi_sidecar_config_restart_required",
                "1 while the file holds changes that take effect only at the next restart (e.g. ports).",
            ),
            GaugeMetricFamily(
                "kpi_sidecar_config_api_overrides",
                "Settings changed through the admin API that differ from the file (undone by a reload).",
            ),
        ]
        if runtime is not None:
            reloads.add_metric(["applied"], runtime.reloads)
            reloads.add_metric(["refused"], runtime.failures)
            last = runtime.last
            values = (
                0.0 if last is not None and not last.ok else 1.0,
                runtime.loaded_at,
                1.0 if runtime.restart_required else 0.0,
                float(len(runtime.overrides())),
            )
            for family, value in zip(gauges, values, strict=True):
                family.add_metric([], value)
        yield reloads
        yield from gauges
