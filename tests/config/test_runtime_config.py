"""RuntimeConfig in process: what a reload applies, what it leaves for a restart, the API's overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from proxy.config.runtime import ConfigCollector, RuntimeConfig, reloadable
from proxy.config.schema import load_layers
from proxy.sidecar import Sidecar

BASE: dict[str, Any] = {
    "upstream": {"servers": ["nats://127.0.0.1:1"], "tls": {"caFile": "/etc/ca.pem"}},
    "listen": {"nats": "127.0.0.1:0", "http": None, "admin": "127.0.0.1:0"},
    "spool": {"path": None},
    "backpressure": {"maxQueueSize": 500},
}


def runtime_for(tmp_path: Path, data: dict[str, Any]) -> tuple[RuntimeConfig, Path]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_layers(path, env={})
    return RuntimeConfig(Sidecar(loaded.config), loaded, path=path), path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("backpressure.maxQueueSize", True),
        ("policies", True),
        ("shutdown.graceMs", True),
        ("clients.maxConnections", True),
        ("clients.token", False),
        ("listen.nats", False),
        ("upstream.servers", False),
        ("spool.path", False),
        ("spool.ackTimeoutMs", True),
        ("backpressureX.y", False),
        ("fleet.maxPublishRate", True),
        ("fleet.name", False),
        ("fleet.ttlS", False),
    ],
)
def test_what_can_change_at_run_time(path: str, expected: bool) -> None:
    assert reloadable(path) is expected


async def test_a_section_removed_from_the_file_needs_a_restart_too(tmp_path: Path) -> None:
    runtime, path = runtime_for(tmp_path, BASE)
    without_tls = {**BASE, "upstream": {"servers": BASE["upstream"]["servers"]}}
    path.write_text(yaml.safe_dump({**without_tls, "backpressure": {"maxQueueSize": 600}}))
    result = runtime.reload("SIGHUP")
    assert result is not None and result.ok
    assert result.changed == ["backpressure.maxQueueSize"]
    assert result.restart_required == ["upstream.tls"]
    # Bound at start: still the old TLS settings; the engine has the new queue bound.
    assert runtime.sidecar.config.upstream.tls is not None
    assert runtime.sidecar.engine.config.max_queue_size == 600


async def test_a_fleet_section_added_by_a_reload_needs_a_restart(tmp_path: Path) -> None:
    runtime, path = runtime_for(tmp_path, BASE)
    path.write_text(yaml.safe_dump({**BASE, "fleet": {"name": "svc", "maxPublishRate": 100}}))
    result = runtime.reload("SIGHUP")
    assert result is not None and result.ok
    assert result.restart_required == ["fleet"]
    assert runtime.sidecar.config.fleet is None and runtime.sidecar.fleet is None


async def test_the_fleet_budget_reloads_but_its_name_needs_a_restart(tmp_path: Path) -> None:
    data = {**BASE, "fleet": {"name": "svc", "maxPublishRate": 100}}
    runtime, path = runtime_for(tmp_path, data)
    path.write_text(yaml.safe_dump({**BASE, "fleet": {"name": "other", "maxPublishRate": 300, "holdS": 5}}))
    result = runtime.reload("SIGHUP")
    assert result is not None and result.ok
    assert sorted(result.changed) == ["fleet.holdS", "fleet.maxPublishRate"]
    assert result.restart_required == ["fleet.name"]
    fleet = runtime.sidecar.config.fleet
    assert fleet is not None and (fleet.name, fleet.max_publish_rate, fleet.hold_s) == ("svc", 300, 5)


async def test_api_overrides_are_visible_and_reset_returns_to_the_file(tmp_path: Path) -> None:
    runtime, _ = runtime_for(tmp_path, BASE)
    engine = runtime.sidecar.engine
    changed = msgspec.structs.replace(engine.config, max_queue_size=42)
    runtime.apply_api(changed, None, ["maxQueueSize"])
    assert runtime.sources()["maxQueueSize"] == "api"
    assert runtime.sources()["maxPublishRate"] == "default"
    assert runtime.overrides() == [{"key": "maxQueueSize", "value": 42, "fileValue": 500}]
    runtime.reset()
    assert engine.config.max_queue_size == 500 and runtime.sources()["maxQueueSize"] == "file"
    assert runtime.overrides() == []


async def test_without_a_file_a_reload_does_nothing_and_is_no_failure() -> None:
    loaded = load_layers(None, env={})
    config = msgspec.structs.replace(
        loaded.config, spool=msgspec.structs.replace(loaded.config.spool, path=None)
    )
    runtime = RuntimeConfig(Sidecar(config), loaded)
    assert runtime.reload("SIGHUP") is None
    assert runtime.failures == 0 and runtime.health()["status"] == "ok"


async def test_the_collector_exports_the_reload_state(tmp_path: Path) -> None:
    runtime, path = runtime_for(tmp_path, BASE)
    registry = CollectorRegistry()
    registry.register(ConfigCollector(runtime))
    path.write_text("backpressure: [")
    result = runtime.reload("file changed")
    assert result is not None and not result.ok and result.errors[0].startswith(f"{path}:1:")
    text = generate_latest(registry).decode()
    assert 'kpi_sidecar_config_reloads_total{result="refused"} 1.0' in text
    assert 'kpi_sidecar_config_reloads_total{result="applied"} 0.0' in text
    assert "kpi_sidecar_config_reload_successful 0.0" in text
    assert "kpi_sidecar_config_restart_required 0.0" in text
