"""Critical traffic survives upstream crashes and sidecar restarts: counted upstream in a JetStream stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from tests.conftest import NatsServer, SidecarProcess, sidecar_config

CRITICAL_RULES = [{"subject": "crit.>", "priority": "critical", "delivery": "jetstream"}]


async def connect(url: str) -> nats.NATS:
    return await nats.connect(url, allow_reconnect=False, connect_timeout=3)


async def add_stream(url: str, name: str, subjects: list[str]) -> None:
    nc = await connect(url)
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=subjects))
    await nc.close()


async def stored_payloads(url: str, stream: str, want: int, timeout: float) -> list[bytes]:
    """Wait until `stream` holds `want` messages (or the timeout), then return every payload in order."""
    nc = await connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        count = (await js.stream_info(stream)).state.messages
        if count >= want or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    payloads = [(await js.get_msg(stream, seq)).data for seq in range(1, count + 1)]
    await nc.close()
    return payloads


async def assert_each_once(url: str, stream: str, total: int) -> None:
    """The stream holds payloads "0" to str(total - 1), each exactly once (in any order)."""
    payloads = await stored_payloads(url, stream, total, timeout=30)
    assert sorted(payloads, key=int) == [str(i).encode() for i in range(total)]


def zero_loss_config(upstream: NatsServer, workdir: Path, **overrides: Any) -> dict[str, Any]:
    return sidecar_config(
        upstream.url,
        policies=CRITICAL_RULES,
        spool={"path": str(workdir / "spool"), "upstreamDownThresholdMs": 300, "ackTimeoutMs": 1000},
        upstream={
            "servers": [upstream.url],
            "pingIntervalMs": 500,
            "maxPingsOut": 2,
            "reconnectWaitMs": 50,
            "maxReconnectWaitMs": 200,
        },
        **overrides,
    )


async def test_upstream_kill9_mid_stream_loses_no_critical_message(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    upstream: NatsServer = nats_factory(jetstream=True)
    await add_stream(upstream.url, "CRIT", ["crit.>"])
    proc: SidecarProcess = sidecar_factory(zero_loss_config(upstream, workdir))
    app = await connect(proc.nats_url)
    total = 1500
    for i in range(total):
        await app.publish("crit.orders", str(i).encode())
        if i % 50 == 49:
            await asyncio.sleep(0.03)
        if i == 500:
            upstream.kill()  # SIGKILL: bytes in flight to the server are gone
        if i == 1000:
            upstream.start()
    await app.flush()
    await assert_each_once(upstream.url, "CRIT", total)  # once: JetStream removed resends by Nats-Msg-Id
    await app.close()


async def test_sigterm_with_upstream_down_then_restart_delivers_everything(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    upstream: NatsServer = nats_factory(jetstream=True)
    await add_stream(upstream.url, "CRIT", ["crit.>"])
    proc: SidecarProcess = sidecar_factory(zero_loss_config(upstream, workdir))
    upstream.stop()
    app = await connect(proc.nats_url)
    total = 400
    for i in range(total):
        await app.publish("crit.payments", f"p{i}".encode())
        await app.publish("bulk.noise", b"x")  # medium, may be shed at shutdown
    await app.flush()
    await app.close()
    started = time.monotonic()
    assert proc.terminate(timeout=30) == 0
    assert time.monotonic() - started < 5.0 + 1.0  # within the 5 s grace of the test config
    assert "critical messages spooled" in proc.log()
    upstream.start()
    proc.start()  # same config, same spool path: replays on start
    payloads = await stored_payloads(upstream.url, "CRIT", total, timeout=30)
    assert payloads == [f"p{i}".encode() for i in range(total)]  # each once, replayed in order


async def test_core_critical_messages_confirmed_by_ping_survive_reconnect(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    # Without `delivery: jetstream`, a PONG after the write confirms; unconfirmed ones are resent.
    upstream: NatsServer = nats_factory(jetstream=True)
    await add_stream(upstream.url, "CORE", ["core.>"])
    config = zero_loss_config(upstream, workdir)
    config["policies"] = [{"subject": "core.>", "priority": "critical"}]
    proc: SidecarProcess = sidecar_factory(config)
    app = await connect(proc.nats_url)
    upstream.stop()  # a clean stop: the sidecar sees the close, queues, spools past the threshold
    for i in range(300):
        await app.publish("core.events", str(i).encode())
    await app.flush()
    await asyncio.sleep(0.5)
    upstream.start()
    await assert_each_once(upstream.url, "CORE", 300)
    await app.close()


async def test_pending_pubacks_are_bounded_and_the_rest_waits_in_the_queue(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    # No stream captures "unacked.>": every PubAck is a 503, so the messages stay pending (never dropped).
    upstream: NatsServer = nats_factory(jetstream=True)
    config = zero_loss_config(upstream, workdir)
    config["policies"] = [{"subject": "unacked.>", "priority": "critical", "delivery": "jetstream"}]
    config["spool"].update({"maxPendingAcks": 5, "ackTimeoutMs": 2000})
    proc: SidecarProcess = sidecar_factory(config)
    app = await connect(proc.nats_url)
    for i in range(20):
        await app.publish("unacked.x", str(i).encode())
    await app.flush()
    await asyncio.sleep(0.5)
    upstream_health = proc.get("/api/backpressure/health/detailed")["data"]["components"]["upstream"]
    status = proc.status()
    assert upstream_health["pendingAcks"] == 5  # at the limit, no further
    assert status["currentQueueSize"] == 15  # the rest waits, counted, never dropped
    assert status["droppedMessages"] == 0
    assert proc.metric("kpi_sidecar_pending_acks") == 5
    # Once a stream captures the subject, the resends are acknowledged and everything drains.
    await add_stream(upstream.url, "UNACKED", ["unacked.>"])
    await assert_each_once(upstream.url, "UNACKED", 20)
    await app.close()


async def test_full_spool_stops_reading_the_application_then_delivers_everything(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    upstream: NatsServer = nats_factory(jetstream=True)
    await add_stream(upstream.url, "FULL", ["crit.>"])
    config = zero_loss_config(upstream, workdir, backpressure={"maxQueueSize": 10, "maxPublishRate": 100000})
    config["spool"]["maxBytes"] = 1024  # about ten critical frames
    proc: SidecarProcess = sidecar_factory(config)
    upstream.stop()
    await asyncio.sleep(0.5)  # past upstreamDownThresholdMs: critical messages go to disk
    app = await nats.connect(proc.nats_url, allow_reconnect=False, flush_timeout=60)
    total = 60
    for i in range(total):
        await app.publish("crit.full", str(i).encode())
    # Queue and spool are full: the sidecar stops reading this connection, so the PING behind the
    # publishes gets no PONG. Real backpressure, nothing dropped.
    with pytest.raises(nats.errors.FlushTimeoutError):
        # (nats-py's first PING may overtake its own buffered publishes; the second follows them.)
        await app.flush(timeout=1)
        await app.flush(timeout=1)
    status = proc.status()
    assert status["droppedMessages"] == 0
    assert status["currentQueueSize"] <= 10
    detailed = proc.get("/api/backpressure/health/detailed")["data"]["components"]["spool"]
    assert 0 < detailed["bytes"] <= 1024, detailed
    upstream.start()
    # Queue and spool drain side by side: complete and without duplicates, not necessarily in order.
    await assert_each_once(upstream.url, "FULL", total)
    await app.flush(timeout=10)  # reading resumed
    await app.close()
