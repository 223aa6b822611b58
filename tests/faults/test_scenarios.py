"""The seed's validation scenarios with real processes: each bounded in time, each asserting counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import ROOT, NatsServer, SidecarProcess, settle, sidecar_config
from tests.faults.relay import FreezableRelay
from tests.faults.test_zero_loss import add_stream, assert_each_once, connect


def rss_mb(proc: SidecarProcess) -> float:
    assert proc.proc is not None
    return psutil.Process(proc.proc.pid).memory_info().rss / 1_048_576


def health_ok(proc: SidecarProcess) -> bool:
    try:
        with urllib.request.urlopen(proc.admin_url + "/api/backpressure/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, TimeoutError):
        return False


def flood(port: int, subject: str, size: int, seconds: float) -> subprocess.Popen[bytes]:
    """A raw-socket publisher in its own process: pipelined PUBs as fast as the socket takes them."""
    code = f"""
import socket, time
s = socket.create_connection(("127.0.0.1", {port}))
s.recv(4096)
s.sendall(b'CONNECT {{"verbose":false,"pedantic":false}}\\r\\n')
frame = b"PUB {subject} {size}\\r\\n" + b"x" * {size} + b"\\r\\n"
chunk = frame * max(1, 65536 // len(frame))
end = time.monotonic() + {seconds}
s.settimeout(0.5)
while time.monotonic() < end:
    try:
        s.sendall(chunk)
    except (socket.timeout, OSError):
        if time.monotonic() >= end:
            break
s.close()
"""
    return subprocess.Popen([sys.executable, "-c", code])


async def test_normal_operation_success_rate_and_latency(
    nats_server: NatsServer, sidecar: SidecarProcess
) -> None:
    direct = await connect(nats_server.url)
    latencies: list[float] = []

    async def on_msg(msg: Any) -> None:
        latencies.append(time.time() - float(msg.data.decode()))

    await direct.subscribe("normal.>", cb=on_msg)
    await settle(direct)
    app = await connect(sidecar.nats_url)
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < 3.0:  # 300 msg/s: normal load, level none
        for _ in range(3):
            await app.publish("normal.kpi", repr(time.time()).encode())
            sent += 1
        await asyncio.sleep(0.01)
    await app.flush()
    await asyncio.sleep(0.5)
    assert len(latencies) / sent > 0.95
    p95 = statistics.quantiles(latencies, n=20)[18]
    assert p95 < 0.100, f"p95 {p95 * 1000:.1f} ms"
    await app.close()
    await direct.close()


async def test_network_partition_detected_queued_spooled_and_delivered_after_heal(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    upstream: NatsServer = nats_factory(jetstream=True)
    await add_stream(upstream.url, "PART", ["part.>"])
    relay = FreezableRelay(upstream.port)
    await relay.start()
    config = sidecar_config(
        relay.url,
        upstream={
            "servers": [relay.url],
            "pingIntervalMs": 300,
            "maxPingsOut": 2,
            "connectTimeoutMs": 500,
            "reconnectWaitMs": 50,
            "maxReconnectWaitMs": 200,
        },
        policies=[{"subject": "part.>", "priority": "critical", "delivery": "jetstream"}],
        spool={"path": str(workdir / "spool"), "upstreamDownThresholdMs": 300, "ackTimeoutMs": 1000},
    )
    proc: SidecarProcess = sidecar_factory(config)
    app = await connect(proc.nats_url)
    seq = 0

    async def publish(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            await app.publish("part.events", str(seq).encode())
            seq += 1
            if seq % 20 == 0:
                await asyncio.sleep(0.01)
        await app.flush()

    await publish(200)
    relay.freeze()
    await publish(300)
    # Stale within pingInterval * (maxPingsOut + 1), plus a poll.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and proc.status()["upstreamConnected"]:
        await asyncio.sleep(0.1)
    assert proc.status()["upstreamConnected"] is False
    await publish(100)
    # Past upstreamDownThresholdMs, queued critical messages go to disk (checked every tick, 1 s).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and proc.status()["spooledMessages"] == 0:
        await asyncio.sleep(0.1)
    assert proc.status()["spooledMessages"] > 0
    relay.heal()
    await publish(100)
    await assert_each_once(upstream.url, "PART", seq)
    await app.close()
    await relay.close()


async def test_memory_pressure_with_stalled_upstream_stays_bounded(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    max_mb = 200
    config = sidecar_config(
        nats_server.url,
        backpressure={"maxMemoryUsageMB": max_mb, "maxQueueSize": 20000, "maxPublishRate": 1_000_000},
        upstream={"servers": [nats_server.url], "pingIntervalMs": 500, "maxPingsOut": 2},
    )
    proc: SidecarProcess = sidecar_factory(config)
    baseline = rss_mb(proc)
    nats_server.pause()  # SIGSTOP: the upstream stops reading without closing
    try:
        publisher = flood(proc.ports["nats"], "mem.flood", 1024, seconds=6)
        peak = 0.0
        healthy = True
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(proc))
            healthy = healthy and await asyncio.to_thread(health_ok, proc)
            await asyncio.sleep(0.25)
        publisher.wait(10)
        status = proc.status()
    finally:
        nats_server.resume()
    # The documented margin (docs/zero-loss.md, "Memory bound"): the queue is bounded by maxQueueSize
    # messages, the upstream buffer by upstream.maxPendingBytes; RSS stays under maxMemoryUsageMB + 50 MB.
    assert peak < max_mb + 50, f"peak RSS {peak:.0f} MB (baseline {baseline:.0f} MB)"
    assert healthy
    assert status["currentQueueSize"] <= 20000
    assert status["droppedMessages"] > 0
    assert status["degradationLevel"] != "none"


def _cpu_hog() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


async def test_cpu_saturation_keeps_critical_flowing_and_raises_level_on_cpu(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    config = sidecar_config(
        nats_server.url,
        backpressure={"maxCpuUsagePercent": 25, "maxPublishRate": 10_000_000, "recoveryDelayMs": 1000},
        policies=[
            {"subject": "cpu.critical.>", "priority": "critical"},
            {"subject": "cpu.flood", "priority": "low"},
        ],
    )
    proc: SidecarProcess = sidecar_factory(config)
    assert proc.proc is not None
    hogs = [_cpu_hog() for _ in range(2)]
    try:
        for pid in [proc.proc.pid, *(h.pid for h in hogs)]:
            os.sched_setaffinity(pid, {0})  # everyone on one core: the sidecar's CPU is contended
        direct = await connect(nats_server.url)
        got: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        await direct.subscribe("cpu.critical.>", cb=on_msg)
        await settle(direct)
        publisher = flood(proc.ports["nats"], "cpu.flood", 128, seconds=6)
        app = await connect(proc.nats_url)
        signals: set[str] = set()
        levels: set[str] = set()
        for i in range(100):
            await app.publish("cpu.critical.orders", str(i).encode())
            if i % 10 == 0:
                await app.flush()
                status = await asyncio.to_thread(proc.status)
                signals.add(status["dominantSignal"])
                levels.add(status["degradationLevel"])
            await asyncio.sleep(0.05)
        await app.flush()
        publisher.wait(15)
        deadline = time.monotonic() + 10
        while len(got) < 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert sorted(got, key=int) == [str(i).encode() for i in range(100)]
        assert "cpu" in signals
        assert levels - {"none"}, levels
        await app.close()
        await direct.close()
    finally:
        for hog in hogs:
            hog.send_signal(signal.SIGKILL)
            hog.wait()


def _raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(data)
        sock.settimeout(0.3)
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, OSError):
            pass


async def test_bad_input_everywhere_leaves_the_process_healthy(
    nats_server: NatsServer, sidecar: SidecarProcess, workdir: Path
) -> None:
    rng = random.Random(99)
    before = rss_mb(sidecar)
    junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000))) for _ in range(15)]
    malformed_http = [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /api/backpressure/config HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n{",
        b"PUT /api/backpressure/config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200),  # a TLS hello
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
    ]
    for port in (sidecar.ports["nats"], sidecar.ports["admin"], sidecar.ports["http"]):
        for data in junk + malformed_http:
            await asyncio.to_thread(_raw, port, data)
    # Invalid JSON and invalid values on the admin API: 400, nothing changed.
    for body in (b"{not json", b'{"maxQueueSize": -1}', b'{"noSuchKey": 1}', b"[]"):
        req = urllib.request.Request(
            sidecar.admin_url + "/api/backpressure/config",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError(f"accepted {body!r}")
        except urllib.error.HTTPError as err:
            assert err.code == 400
    # An invalid configuration file is refused with every error and exit 2.
    bad = workdir / "bad.yaml"
    bad.write_text("backpressure: {maxQueueSize: -1, nope: 2}\nlisten: {nats: 12}\n")
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 2
    assert (
        "$.backpressure.maxQueueSize" in out.stderr and "nope" in out.stderr and "$.listen.nats" in out.stderr
    )
    # Still healthy, memory bounded, other clients unaffected.
    assert health_ok(sidecar)
    assert rss_mb(sidecar) < before + 30
    app = await connect(sidecar.nats_url)
    direct = await connect(nats_server.url)
    sub = await direct.subscribe("after.junk")
    await settle(direct)
    await app.publish("after.junk", b"still works")
    await settle(app)
    assert (await sub.next_msg(timeout=3)).data == b"still works"
    await app.close()
    await direct.close()


async def test_soak_rss_flat_after_warmup(nats_server: NatsServer, sidecar: SidecarProcess) -> None:
    """The short version of the 24 h soak: a mixed load, RSS sampled every second, flat after warm-up."""
    out = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "loadtest",
        "--url",
        sidecar.nats_url,
        "--rate",
        "800",
        "--duration",
        "16",
        "--size",
        "512",
        "--subjects",
        "soak.a,soak.b,soak.c",
        "--json",
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    samples: list[float] = []
    while out.returncode is None and len(samples) < 30:
        samples.append(rss_mb(sidecar))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(out.wait(), 1.0)
    stdout, stderr = await out.communicate()
    assert out.returncode == 0, stderr.decode()[-2000:]
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    assert summary["sent"] > 0 and summary["successRate"] > 95  # a percentage
    warm = statistics.mean(samples[5:9])
    late = statistics.mean(samples[-4:])
    assert late < warm + 10, f"RSS grew from {warm:.1f} to {late:.1f} MB: {samples}"
