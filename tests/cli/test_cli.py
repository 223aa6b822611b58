"""`kpi-sidecar status` and `kpi-sidecar loadtest` as an operator runs them, against a running sidecar."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from proxy.status_cli import format_status, normalize_admin_url
from tests.conftest import ROOT, free_port


def kpi(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
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
