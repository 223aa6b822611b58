"""Flow control: an upstream socket backed up past upstream.maxPendingBytes.

For up to upstream.flowControlMs the sidecar stops reading the application (TCP pushes back on it) instead
of queueing message by message; past that, the upstream counts as stalled and the engine queues. Either
way nothing is lost: every message arrives once the hub reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import nats

from tests.conftest import NatsServer, SidecarProcess, eventually, settle, sidecar_config

N = 64 * 320  # messages, sent in chunks of 64
SIZE = 1024
FRAME_OF = b"PUB %s %d\r\n%s\r\n"
FRAME = FRAME_OF % (b"flow.paused", SIZE, b"x" * SIZE)
MAX_PENDING = 65536  # upstream.maxPendingBytes of these tests
READ_SIZE = 256 * 1024  # the largest read uvloop hands the sidecar


def publish_all(port: int, subject: str, sent: list[int]) -> threading.Thread:
    """N plain PUBs of SIZE bytes on a raw socket, blocking as TCP tells it; sent[0] counts the bytes."""
    frame = FRAME_OF % (subject.encode(), SIZE, b"x" * SIZE)
    chunk = frame * 64

    def run() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.recv(4096)
            sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
            for _ in range(N // 64):
                sock.sendall(chunk)
                sent[0] += len(chunk)
            sock.sendall(b"PING\r\n")
            buf = b""
            while b"PONG" not in buf:
                data = sock.recv(4096)
                assert data, "the sidecar closed the publisher's connection"
                buf += data

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def upstream_component(proc: SidecarProcess) -> dict[str, Any]:
    return proc.get("/api/backpressure/health/detailed")["data"]["components"]["upstream"]


async def count_on_hub(server: NatsServer, subject: str) -> tuple[nats.NATS, list[int]]:
    nc = await nats.connect(server.url)
    got = [0]

    async def on_msg(_msg: Any) -> None:
        got[0] += 1

    await nc.subscribe(subject, cb=on_msg)
    await settle(nc)
    return nc, got


def flow_config(server: NatsServer, flow_control_ms: int) -> dict[str, Any]:
    return sidecar_config(
        server.url,
        # No stale-connection detection while the hub is stopped: this is about a slow, live upstream.
        upstream={
            "servers": [server.url],
            "maxPendingBytes": MAX_PENDING,
            "flowControlMs": flow_control_ms,
            "pingIntervalMs": 600_000,
        },
    )


@contextlib.asynccontextmanager
async def publishing_to_a_stopped_hub(
    nats_server: NatsServer, proc: SidecarProcess, subject: str
) -> AsyncIterator[tuple[threading.Thread, list[int]]]:
    """The hub stopped (SIGSTOP), the publisher sending its N messages through the sidecar; on leaving,
    the hub resumes and all N must arrive on it."""
    hub, got = await count_on_hub(nats_server, subject)
    nats_server.pause()
    sent = [0]
    try:
        publisher = publish_all(proc.ports["nats"], subject, sent)
        yield publisher, sent
    finally:
        nats_server.resume()
    publisher.join(30)
    assert not publisher.is_alive()
    await eventually(lambda: got[0] >= N, timeout=30)
    assert got[0] == N
    assert proc.status()["droppedMessages"] == 0
    await hub.close()


async def test_a_backed_up_upstream_pauses_the_application_and_loses_nothing(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    proc: SidecarProcess = sidecar_factory(flow_config(nats_server, 60_000))
    async with publishing_to_a_stopped_hub(nats_server, proc, "flow.paused") as (publisher, sent):
        await eventually(lambda: upstream_component(proc)["flowPausedClients"] == 1, timeout=10)
        await asyncio.sleep(0.5)  # the kernel's socket buffers fill
        before = sent[0]
        await asyncio.sleep(1.0)
        upstream = upstream_component(proc)
        status = proc.status()
        # Not read: the publisher is stuck in sendall, the queue is untouched, nothing is shed.
        assert upstream["flowPausedClients"] == 1 and upstream["stalled"] is False
        assert upstream["status"] == "ok"
        assert sent[0] == before
        assert publisher.is_alive()
        assert status["currentQueueSize"] == 0
        assert status["flowPausedClients"] == 1 and status["upstreamStalled"] is False
        assert proc.metric("kpi_sidecar_flow_paused_clients") == 1
        # The bound: maxPendingBytes plus at most the one read that crossed it (256 KiB).
        assert upstream["pendingBytes"] <= MAX_PENDING + READ_SIZE + len(FRAME) * 64
    assert upstream_component(proc)["flowPausedClients"] == 0
    assert proc.metric("kpi_sidecar_flow_pauses_total") >= 1


async def test_past_flow_control_ms_a_stalled_upstream_fills_the_queue(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    proc: SidecarProcess = sidecar_factory(flow_config(nats_server, 300))
    async with publishing_to_a_stopped_hub(nats_server, proc, "flow.stalled"):
        await eventually(lambda: proc.status()["currentQueueSize"] > 0, timeout=10)
        upstream = upstream_component(proc)
        status = proc.status()
        assert upstream["stalled"] is True
        assert proc.metric("kpi_upstream_stalled") == 1
        assert upstream["status"] == "warning"
        assert upstream["flowPausedClients"] == 0
        assert status["currentQueueSize"] > 0
        assert status["upstreamStalled"] is True
    upstream = upstream_component(proc)
    assert upstream["stalled"] is False and upstream["status"] == "ok"
    assert proc.metric("kpi_upstream_stalled") == 0


async def test_flow_control_off_queues_at_once(nats_server: NatsServer, sidecar_factory: Any) -> None:
    proc: SidecarProcess = sidecar_factory(flow_config(nats_server, 0))
    async with publishing_to_a_stopped_hub(nats_server, proc, "flow.off"):
        await eventually(lambda: proc.status()["currentQueueSize"] > 0, timeout=10)
        assert proc.metric("kpi_sidecar_flow_pauses_total") == 0


async def test_losing_the_upstream_releases_paused_applications_and_nothing_is_lost(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    proc: SidecarProcess = sidecar_factory(flow_config(nats_server, 60_000))
    nats_server.pause()
    sent = [0]
    publisher = publish_all(proc.ports["nats"], "flow.lost", sent)
    await eventually(lambda: upstream_component(proc)["flowPausedClients"] == 1, timeout=10)
    # The server dies while the sidecar holds its application back: the connection is lost, the
    # application is read again, and what it sends waits in the queue for the next server.
    nats_server.kill()
    await eventually(lambda: not proc.status()["upstreamConnected"], timeout=10)
    await eventually(lambda: upstream_component(proc)["flowPausedClients"] == 0, timeout=5)
    await eventually(lambda: proc.status()["currentQueueSize"] > 0, timeout=5)
    nats_server.start()
    publisher.join(30)
    assert not publisher.is_alive()
    await eventually(
        lambda: proc.status()["upstreamConnected"] and proc.status()["currentQueueSize"] == 0, 15
    )
    status = proc.status()
    # What was written to the dead server's socket went with it (core NATS: at most once); everything
    # read after the loss was queued, then forwarded to the new server. Every message is accounted for.
    assert status["receivedMessages"] == status["forwardedMessages"] == N
    assert status["droppedMessages"] == 0


async def test_critical_messages_with_no_room_hold_their_application_and_arrive_later(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    # The queue full of critical messages and no spool: the engine has no room (BLOCK), the application
    # is held (not read, kpi_sidecar_held_clients), and every message arrives once the hub reads again.
    config = flow_config(nats_server, 300)
    config["backpressure"] = {**config["backpressure"], "maxQueueSize": 500}
    config["policies"] = [{"subject": "flow.critical", "priority": "critical"}]
    config["spool"] = {"path": None}
    proc: SidecarProcess = sidecar_factory(config)
    assert proc.metric("kpi_sidecar_held_clients") == 0
    async with publishing_to_a_stopped_hub(nats_server, proc, "flow.critical") as (publisher, _sent):
        await eventually(lambda: proc.metric("kpi_sidecar_held_clients") == 1, timeout=10)
        assert proc.status()["currentQueueSize"] == 500
        assert publisher.is_alive()
    assert proc.metric("kpi_sidecar_held_clients") == 0
