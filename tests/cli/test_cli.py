"""`kpi-sidecar status` and `kpi-sidecar loadtest` as an operator runs them, against a running sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from proxy.cli.ports_file import PORTS_FILE_ENV
from proxy.cli.status import format_status, normalize_admin_url
from tests.conftest import ROOT, free_port


def kpi(*args: str, timeout: float = 30, ports_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI; `ports_file` stands for the file `make run` writes (none by default, whatever runs)."""
    env = {**os.environ, PORTS_FILE_ENV: str(ports_file or ROOT / ".run" / "no-such-sidecar.json")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
        env=env,
        check=False,
    )


def test_status_prints_a_summary(stack: Any) -> None:
    result = kpi("status", "--admin", stack.admin)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"kpi-sidecar at {stack.admin}: ")
    assert "level none" in out and "upstream   connected" in out and "queue      0 / 100000" in out
    # A bare host:port works too.
    bare = kpi("status", "--admin", stack.admin.removeprefix("http://") + "/")
    assert bare.returncode == 0 and "level none" in bare.stdout


def test_status_exits_non_zero_with_a_clear_message(stack: Any) -> None:
    port = free_port()
    result = kpi("status", "--admin", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot reach the admin API at http://127.0.0.1:{port}" in result.stderr
    assert result.stdout == ""
    # Something answers, but not a sidecar's admin API (the ingest port: 404 in the envelope).
    wrong = kpi("status", "--admin", stack.sidecar.http_url)
    assert wrong.returncode == 1 and "answered an error" in wrong.stderr


def test_loadtest_drives_load_through_the_nats_port(stack: Any) -> None:
    result = kpi(
        "loadtest",
        "--url",
        stack.sidecar.nats_url,
        "--rate",
        "300",
        "--duration",
        "1",
        "--size",
        "64",
        "--subjects",
        "cli.load.a,cli.load.b",
        "--priority",
        "high",
        "--json",
        "--min-success-rate",
        "100",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sent"] == 300 and summary["delivered"] == 300 and summary["successRate"] == 100.0
    latency = summary["latencyMs"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # The messages went through the sidecar, with their priority.
    published = stack.sidecar.get("/api/backpressure/status")["data"]["forwardedMessages"]
    assert published >= 300


def test_loadtest_soak_reports_memory_and_latency_over_time(stack: Any) -> None:
    result = kpi(
        "loadtest",
        "--url",
        stack.sidecar.nats_url,
        "--rate",
        "200",
        "--duration",
        "1.6",
        "--size",
        "128",
        "--subjects",
        "cli.soak",
        "--soak",
        "--admin",
        stack.admin,
        "--report-every",
        "0.5",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) >= 2
    assert all("sidecar memory" in line and "p99" in line for line in progress), progress
    assert any(line.startswith("sent 320  delivered 320") for line in lines), lines
    assert any(line.startswith("sidecar memory MB  first") for line in lines), lines


def test_loadtest_refuses_bad_arguments_and_unreachable_urls() -> None:
    bad = kpi("loadtest", "--subjects", "a.*", "--duration", "1")
    assert bad.returncode == 2 and "no wildcard" in bad.stderr
    small = kpi("loadtest", "--size", "4", "--duration", "1")
    assert small.returncode == 2 and "--size" in small.stderr
    down = kpi("loadtest", "--url", f"nats://127.0.0.1:{free_port()}", "--duration", "0.2")
    assert down.returncode == 1 and "cannot connect" in down.stderr


def test_status_formatting_and_url_normalization() -> None:
    assert normalize_admin_url(" 127.0.0.1:3000/ ") == "http://127.0.0.1:3000"
    assert normalize_admin_url("https://sidecar:3000") == "https://sidecar:3000"
    text = format_status(
        "http://x",
        {
            "degradationLevel": "high",
            "loadPercent": 163.4,
            "dominantSignal": "queue",
            "upstreamConnected": False,
            "currentQueueSize": 800,
            "maxQueueSize": 1000,
            "droppedByReason": {"sampling": 5, "low_priority": 2},
            "droppedMessages": 7,
            "samplingRate": 0.5,
        },
        {"status": "degraded"},
    )
    assert text.splitlines()[0] == "kpi-sidecar at http://x: DEGRADED (level high, load 163% from queue)"
    assert "DISCONNECTED" in text and "800 / 1000 (80%)" in text and "(low_priority 2, sampling 5)" in text
    paused = format_status("http://x", {"upstreamConnected": True, "flowPausedClients": 2}, None)
    assert "upstream   connected, backed up: 2 application(s) paused by flow control" in paused
    stalled = format_status("http://x", {"upstreamConnected": True, "upstreamStalled": True}, None)
    assert "upstream   connected, STALLED" in stalled


def test_run_with_a_port_already_taken_fails_with_one_line(tmp_path: Path) -> None:
    import socket as _socket

    taken = _socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "busy.yaml"
    config.write_text(
        f'listen: {{nats: "127.0.0.1:{port}", http: null, admin: "127.0.0.1:0"}}\n'
        f'upstream: {{servers: ["nats://127.0.0.1:1"], connectTimeoutMs: 100}}\n'
        f"spool: {{path: {tmp_path / 'spool'}}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    taken.close()
    assert out.returncode == 1
    assert "address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_version() -> None:
    result = kpi("--version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.returncode == 0 and result.stdout == f"kpi-sidecar {version}\n"


def test_status_finds_the_sidecar_make_run_started_and_says_so(stack: Any) -> None:
    # `make run` passes --ports-file .run/sidecar.json; the fixture's sidecar wrote its own the same way.
    result = kpi("status", ports_file=stack.sidecar.ports_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"kpi-sidecar at {stack.admin}: ")
    pid = stack.sidecar.proc.pid
    assert result.stderr == (
        f"kpi-sidecar status: {stack.admin}, the sidecar `make run` started (pid {pid}, "
        f"{stack.sidecar.ports_file})\n"
    )


def test_status_without_a_running_dev_sidecar_names_the_default_address(tmp_path: Path) -> None:
    stale = tmp_path / "sidecar.json"
    # A file left by a sidecar that is gone (pid of no process) is not used.
    stale.write_text(json.dumps({"pid": 2**22 + 12345, "urls": {"admin": "http://127.0.0.1:1"}}))
    result = kpi("status", ports_file=stale)
    assert result.stderr.startswith(
        "kpi-sidecar status: http://127.0.0.1:3000, the default admin address (no --admin given, no "
        "sidecar started by `make run`)\n"
    )


def test_loadtest_goes_through_the_dev_sidecar_by_default(stack: Any) -> None:
    before = stack.sidecar.status()["forwardedMessages"]
    result = kpi(
        "loadtest", "--rate", "200", "--duration", "0.5", "--json", ports_file=stack.sidecar.ports_file
    )
    assert result.returncode == 0, result.stderr
    assert f"kpi-sidecar loadtest: {stack.sidecar.nats_url}, the sidecar `make run` started" in result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["target"] == "kpi-sidecar" and summary["url"] == stack.sidecar.nats_url
    assert summary["delivered"] == summary["sent"] == 100
    assert stack.sidecar.status()["forwardedMessages"] >= before + 100


def test_loadtest_says_when_it_measures_a_nats_server_directly(stack: Any) -> None:
    result = kpi("loadtest", "--url", stack.nats.url, "--rate", "100", "--duration", "0.3", "--json")
    assert result.returncode == 0, result.stderr
    assert f"WARNING: {stack.nats.url} is a nats-server 2." in result.stderr
    assert "not through the sidecar" in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["target"] == "nats-server"


def test_make_run_installs_only_what_running_needs() -> None:
    dry = subprocess.run(
        ["make", "-n", "-B", "run"], capture_output=True, text=True, cwd=ROOT, timeout=30, check=False
    )
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout
    assert "nats-server" in commands and "proxy.cli.devrun" in commands
    for test_only in ("golang", "nodejs", "npm", "prometheus", "[test]", "promtool"):
        assert test_only not in commands, test_only
    # The test target still brings them.
    full = subprocess.run(
        ["make", "-n", "-B", "test"], capture_output=True, text=True, cwd=ROOT, timeout=30, check=False
    )
    assert all(tool in full.stdout for tool in ("golang-go", "prometheus", "nodejs", "[test]"))
