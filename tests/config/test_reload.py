"""Reload against a real sidecar process: SIGHUP and file changes (a ConfigMap's symlink swap included)
re-read, validate and apply the file, or keep the running configuration and say why."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from tests.admin.api import call
from tests.conftest import NatsServer, SidecarProcess, eventually, sidecar_config

P = "/api/backpressure"


def write(path: Path, config: dict[str, Any]) -> None:
    # Through a temporary file and a rename, as editors and kubectl do: the watcher never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)


def config_of(sidecar: SidecarProcess) -> dict[str, Any]:
    return sidecar.get(f"{P}/config")["data"]


def config_health(sidecar: SidecarProcess) -> dict[str, Any]:
    return sidecar.get(f"{P}/health/detailed")["data"]["components"]["config"]


def sample(sidecar: SidecarProcess, line_start: str) -> float:
    with urllib.request.urlopen(sidecar.admin_url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics")


def reloads(sidecar: SidecarProcess, result: str) -> float:
    return sample(sidecar, f'kpi_sidecar_config_reloads_total{{result="{result}"}}')


@pytest.fixture
def base(nats_server: NatsServer, workdir: Path) -> dict[str, Any]:
    return sidecar_config(nats_server.url, spool={"path": str(workdir / "spool")})


async def test_a_changed_file_is_applied(sidecar_factory: Any, base: dict[str, Any]) -> None:
    sidecar = sidecar_factory(base)
    assert config_of(sidecar)["maxQueueSize"] == 100000
    assert reloads(sidecar, "applied") == 0
    policies = [{"subject": "kpi.marketing.>", "priority": "low"}]
    write(
        sidecar.config_path,
        {**base, "backpressure": {**base["backpressure"], "maxQueueSize": 4321}, "policies": policies},
    )
    await eventually(lambda: config_of(sidecar)["maxQueueSize"] == 4321, timeout=10)
    data = config_of(sidecar)
    assert data["sources"]["maxQueueSize"] == "file" and data["sources"]["policies"] == "file"
    assert [r["subject"] for r in data["policies"]] == ["kpi.marketing.>"]
    # The engine uses it: the gauge and the classification of a new message.
    assert sample(sidecar, "kpi_backpressure_queue_max_size") == 4321
    published = call(sidecar.http_url, "POST", "/publish/kpi.marketing.ctr", raw=b"x")
    assert published.status == 202 and published.data["priority"] == "low"
    assert reloads(sidecar, "applied") == 1 and reloads(sidecar, "refused") == 0
    assert sample(sidecar, "kpi_sidecar_config_reload_successful") == 1
    health = config_health(sidecar)
    assert health["status"] == "ok" and health["lastReload"]["result"] == "applied"
    assert health["lastReload"]["changed"] == ["backpressure.maxQueueSize", "policies"]
    assert "configuration reloaded (file changed): backpressure.maxQueueSize 100000 -> 4321, policies " in (
        sidecar.log()
    )


async def test_an_invalid_file_keeps_the_running_configuration_and_says_why(
    sidecar_factory: Any, base: dict[str, Any]
) -> None:
    sidecar = sidecar_factory(base)
    sidecar.config_path.write_text(
        yaml.safe_dump(base) + "backpressure:\n  maxQueueSize: 10\n"  # a duplicate key
    )
    await eventually(lambda: reloads(sidecar, "refused") == 1, timeout=10)
    assert config_of(sidecar)["maxQueueSize"] == 100000
    assert sample(sidecar, "kpi_sidecar_config_reload_successful") == 0
    health = config_health(sidecar)
    assert health["status"] == "warning" and health["lastReload"]["result"] == "refused"
    (error,) = health["lastReload"]["errors"]
    assert error.startswith(f"{sidecar.config_path}:") and "duplicate key 'backpressure'" in error
    assert sidecar.get(f"{P}/health/detailed")["data"]["status"] == "degraded"
    log = sidecar.log()
    assert "configuration reload (file changed) refused, the running configuration is kept: " in log
    # Reported once, not at every poll.
    await asyncio.sleep(2.5)
    assert reloads(sidecar, "refused") == 1 and log.count("refused, the running") == 1
    # A value out of range is refused the same way, naming the line and the key.
    write(sidecar.config_path, {**base, "backpressure": {"maxQueueSize": 0}})
    await eventually(lambda: reloads(sidecar, "refused") == 2, timeout=10)
    (error,) = config_health(sidecar)["lastReload"]["errors"]
    assert "$.backpressure.maxQueueSize: must be at least 1 (got 0)" in error
    # Fixed: applied, and the warning is gone.
    write(sidecar.config_path, {**base, "backpressure": {**base["backpressure"], "maxQueueSize": 777}})
    await eventually(lambda: config_of(sidecar)["maxQueueSize"] == 777, timeout=10)
    assert sample(sidecar, "kpi_sidecar_config_reload_successful") == 1
    assert config_health(sidecar)["status"] == "ok"


async def test_sighup_rereads_the_file_and_the_file_wins_over_the_api(
    sidecar_factory: Any, base: dict[str, Any]
) -> None:
    sidecar = sidecar_factory(base)
    answer = call(sidecar.admin_url, "PUT", f"{P}/config", {"maxPublishRate": 55, "recoveryDelayMs": 1234})
    assert answer.status == 200
    data = config_of(sidecar)
    assert data["sources"]["maxPublishRate"] == "api"
    assert {o["key"]: (o["value"], o["fileValue"]) for o in data["overrides"]} == {
        "maxPublishRate": (55, 100000),
        "recoveryDelayMs": (1234, 5000),
    }
    assert sample(sidecar, "kpi_sidecar_config_api_overrides") == 2
    assert sidecar.proc is not None
    sidecar.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: config_of(sidecar)["maxPublishRate"] == 100000, timeout=10)
    data = config_of(sidecar)
    assert data["recoveryDelayMs"] == 5000 and data["overrides"] == []
    assert data["sources"]["maxPublishRate"] == "file" and data["sources"]["recoveryDelayMs"] == "default"
    assert config_health(sidecar)["lastReload"]["trigger"] == "SIGHUP"
    assert (
        "values set through the API replaced by the file's: maxPublishRate, recoveryDelayMs" in sidecar.log()
    )
    assert sidecar.proc.poll() is None  # SIGHUP reloads, it does not stop the process


async def test_a_configmap_symlink_swap_is_seen(
    sidecar_factory: Any, base: dict[str, Any], workdir: Path
) -> None:
    # The kubelet's layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/, swapped atomically.
    mount = workdir / "configmap"
    (mount / "..v1").mkdir(parents=True)
    (mount / "..v1" / "config.yaml").write_text(yaml.safe_dump(base))
    (mount / "..data").symlink_to("..v1")
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    sidecar = sidecar_factory(base)
    sidecar.kill()
    sidecar.config_path = mount / "config.yaml"
    sidecar.start()
    (mount / "..v2").mkdir()
    changed = {**base, "backpressure": {**base["backpressure"], "maxQueueSize": 2468}}
    (mount / "..v2" / "config.yaml").write_text(yaml.safe_dump(changed))
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    await eventually(lambda: config_of(sidecar)["maxQueueSize"] == 2468, timeout=10)
    assert config_of(sidecar)["file"]["path"] == str(mount / "config.yaml")


async def test_settings_bound_at_start_are_reported_and_the_rest_applied(
    sidecar_factory: Any, base: dict[str, Any], nats_factory: Any
) -> None:
    sidecar = sidecar_factory(base)
    other = nats_factory()
    changed = {
        **base,
        "listen": {**base["listen"], "admin": "127.0.0.1:1"},
        "upstream": {**base["upstream"], "servers": [other.url]},
        "clients": {"maxConnections": 1},
    }
    write(sidecar.config_path, changed)
    await eventually(lambda: config_health(sidecar)["restartRequired"] != [], timeout=10)
    health = config_health(sidecar)
    assert health["restartRequired"] == ["listen.admin", "upstream.servers"]
    assert health["status"] == "warning" and health["lastReload"]["changed"] == ["clients.maxConnections"]
    assert sample(sidecar, "kpi_sidecar_config_restart_required") == 1
    assert "needs a restart to take effect: listen.admin, upstream.servers" in sidecar.log()
    # Still on the old port and upstream; the connection limit applies at once.
    assert (
        sidecar.get(f"{P}/health/detailed")["data"]["components"]["upstream"]["url"]
        == base["upstream"]["servers"][0]
    )
    first = await nats.connect(sidecar.nats_url)
    try:
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises different types for a refused connect
            await nats.connect(
                sidecar.nats_url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0
            )
    finally:
        await first.close()
    # Back to the start's values: nothing pending any more.
    write(sidecar.config_path, base)
    await eventually(lambda: config_health(sidecar)["restartRequired"] == [], timeout=10)
    assert sample(sidecar, "kpi_sidecar_config_restart_required") == 0
