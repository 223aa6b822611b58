"""Slow consumers cannot take the sidecar's memory past its bound, and the level recovers after them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import psutil

from tests.conftest import NatsServer, SidecarProcess, sidecar_config

READERS = 8


def steady_publisher(
    port: int, subject: str, rate: int, size: int, seconds: float
) -> subprocess.Popen[bytes]:
    """A raw-socket publisher straight to nats-server: `rate` messages of `size` bytes per second."""
    code = f"""
import socket, time
s = socket.create_connection(("127.0.0.1", {port}))
s.recv(4096)
s.sendall(b'CONNECT {{"verbose":false,"pedantic":false}}\\r\\n')
frame = b"PUB {subject} {size}\\r\\n" + b"x" * {size} + b"\\r\\n"
chunk = frame * ({rate} // 100)
start = time.monotonic()
tick = 0
while time.monotonic() - start < {seconds}:
    s.sendall(chunk)
    tick += 1
    delay = start + tick * 0.01 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
s.close()
"""
    return subprocess.Popen([sys.executable, "-c", code])


async def slow_reader(port: int, subject: str, stop: asyncio.Event) -> int:
    """Subscribes, then reads 16 KB every 50 ms until the sidecar cuts it (or `stop`); returns bytes read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # INFO
    writer.write(f'CONNECT {{"verbose":false}}\r\nSUB {subject} 1\r\nPING\r\n'.encode())
    await writer.drain()
    total = 0
    try:
        while not stop.is_set():
            data = await reader.read(16384)
            if not data:
                break
            total += len(data)
            await asyncio.sleep(0.05)
    except ConnectionError:
        pass
    writer.close()
    return total


async def test_eight_slow_readers_keep_rss_within_the_memory_bound_and_the_level_recovers(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    # The case: 8 readers of 16 KB every 50 ms behind the sidecar while the upstream publishes
    # 10 k msg/s of 1 KB. Each is under its own 64 MiB limit for seconds; before the one bound on all of
    # them, RSS peaked at 639 MB (maxMemoryUsageMB 512) and stayed there, holding the level at medium.
    max_mb = 512
    config = sidecar_config(
        nats_server.url, backpressure={"maxMemoryUsageMB": max_mb, "recoveryDelayMs": 2000}
    )
    proc: SidecarProcess = sidecar_factory(config)
    assert proc.proc is not None
    sidecar_ps = psutil.Process(proc.proc.pid)
    stop = asyncio.Event()
    readers = [
        asyncio.create_task(slow_reader(proc.ports["nats"], "slow.feed", stop)) for _ in range(READERS)
    ]
    deadline = time.monotonic() + 10
    while proc.status().get("activeConnections", READERS) < READERS and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the SUBs are registered upstream
    publisher = steady_publisher(nats_server.port, "slow.feed", 10_000, 1024, seconds=12)
    peak = 0.0
    try:
        end = time.monotonic() + 13
        while time.monotonic() < end:
            peak = max(peak, sidecar_ps.memory_info().rss / 1_048_576)
            await asyncio.sleep(0.1)
    finally:
        publisher.kill()
        publisher.wait(5)
        stop.set()
    await asyncio.gather(*readers)
    assert peak < max_mb + 50, f"peak RSS {peak:.0f} MB"
    assert proc.metric("kpi_sidecar_slow_consumers_total") >= 1
    # The bound over all applications was what cut them (not each one's own 64 MiB).
    assert "slowest consumer" in proc.log()
    # After them, memory goes back and the level returns to none within 15 s.
    deadline = time.monotonic() + 15
    while proc.status()["degradationLevel"] != "none":
        assert time.monotonic() < deadline, proc.status()
        await asyncio.sleep(0.25)
    rss = sidecar_ps.memory_info().rss / 1_048_576
    print(f"peak RSS {peak:.0f} MB, after {rss:.0f} MB")
