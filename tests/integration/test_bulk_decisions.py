"""Runs of publishes decided in bulk against a real nats-server: HPUBs with a KPI-Priority header at level
none, and a priority mix while a flood holds the sidecar at high (shed per group, sampled by a selection,
critical messages with their Nats-Msg-Id, written ahead of the rest). The outcome a user sees is the one
the per-message path gives (it passes these tests too); the speed is `make bench`'s (g) and (h)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from tests.conftest import NatsServer, SidecarProcess, settle, sidecar_config
from tests.flood import Flood

pytestmark = pytest.mark.slow

CEILING = 1000
MIX = ("low", "medium", "low", "medium", "high", "low", "medium", "low", "medium", "high") * 2
MIX = (*MIX[:12], "critical", *MIX[13:])  # 40/40/15/5 per block of 20


def hpub(subject: str, priority: str, payload: bytes, reply: str | None = None) -> bytes:
    block = b"NATS/1.0\r\nKPI-Priority: %s\r\n\r\n" % priority.encode()
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (
        (subject if reply is None else f"{subject} {reply}").encode(),
        len(block),
        len(block) + len(payload),
        block,
        payload,
    )


def raw_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\nPING\r\n')
    buf = b""
    while b"PONG" not in buf:
        buf += sock.recv(4096)
    return sock


def finish(sock: socket.socket) -> None:
    sock.sendall(b"PING\r\n")
    buf = b""
    while b"PONG" not in buf:
        buf += sock.recv(4096)
    sock.close()


def flooded_config(server: NatsServer) -> dict[str, Any]:
    """The publish rate alone sets the level (a Flood at 160 % of CEILING: high); tokens for bursts on
    top of the flood; no heavy-hitter breakers."""
    return sidecar_config(
        server.url,
        backpressure={
            "maxPublishRate": CEILING,
            "rateBurstSeconds": 10,
            "maxQueueSize": 100_000,
            "maxCpuUsagePercent": 1000,
            "maxMemoryUsageMB": 4096,
            "breakerCriticalTopSubjects": 0,
        },
    )


@contextlib.asynccontextmanager
async def held_at(proc: SidecarProcess, level: str, rate: float) -> AsyncIterator[None]:
    """A Flood at `rate` msg/s (flooded_config: 1,600 holds high, 2,600 critical, 0 none) until the
    sidecar is at `level`, then 2 s for the rate tokens the flood leaves to build up."""
    with Flood(proc.ports["nats"], "flood.bulk", rate):
        deadline = time.monotonic() + 15
        while proc.status()["degradationLevel"] != level:
            assert time.monotonic() < deadline, proc.status()["degradationLevel"]
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        yield


async def collect(nc: nats.NATS, subject: str) -> tuple[Counter[str], list[Any]]:
    counts: Counter[str] = Counter()
    msgs: list[Any] = []

    async def on(msg: Any) -> None:
        counts[msg.headers.get("KPI-Priority", "?") if msg.headers else "?"] += 1
        msgs.append(msg)

    await nc.subscribe(subject, cb=on)
    await settle(nc)
    return counts, msgs


async def test_hpubs_with_a_priority_header_are_forwarded_as_a_run(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    proc: SidecarProcess = sidecar_factory(sidecar_config(nats_server.url))
    direct = await nats.connect(nats_server.url)
    counts, msgs = await collect(direct, "bulk.none")
    sock = raw_client(proc.ports["nats"])
    n = 5000
    sock.sendall(b"".join(hpub("bulk.none", ("medium", "high", "low")[i % 3], b"%d" % i) for i in range(n)))
    finish(sock)
    deadline = time.monotonic() + 10
    while len(msgs) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [int(m.data) for m in msgs] == list(range(n))  # all of them, in order, headers kept
    assert counts == {"medium": n // 3 + 1, "high": n // 3 + 1, "low": n // 3}
    assert proc.status()["degradationLevel"] == "none"
    await direct.close()


async def test_a_priority_mix_at_high_is_shed_sampled_and_kept_per_group(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    proc: SidecarProcess = sidecar_factory(flooded_config(nats_server))
    direct = await nats.connect(nats_server.url)
    counts, msgs = await collect(direct, "bulk.mix")
    sent: Counter[str] = Counter()
    async with held_at(proc, "high", 1600):  # 160 % of the ceiling: level high
        for burst in range(5):
            # 200 messages at once: the rate stays under 200 % (critical)
            frames = [hpub("bulk.mix", MIX[i % 20], b"%d.%d" % (burst, i)) for i in range(200)]
            sent.update(MIX[i % 20] for i in range(200))
            sock = raw_client(proc.ports["nats"])
            sock.sendall(b"".join(frames))
            finish(sock)
            await asyncio.sleep(1.2)  # one burst per rate window
        assert proc.status()["degradationLevel"] == "high"
    await asyncio.sleep(1.0)
    assert counts["low"] == 0  # shed at high
    assert counts["high"] == sent["high"] and counts["critical"] == sent["critical"]
    assert 0.4 * sent["medium"] <= counts["medium"] <= 0.6 * sent["medium"]  # sampled at 0.5
    critical = [m for m in msgs if m.headers.get("KPI-Priority") == "critical"]
    assert all(m.headers.get("Nats-Msg-Id") for m in critical)
    assert len({m.headers["Nats-Msg-Id"] for m in critical}) == sent["critical"]
    status = proc.status()
    dropped = sum(status["droppedByReason"].values())
    queued = status["receivedMessages"] - status["forwardedMessages"] - dropped - status["spooledMessages"]
    assert queued >= 0 and status["droppedByReason"].get("low_priority", 0) >= sent["low"]
    await direct.close()


@pytest.mark.parametrize("level", ["high", "critical"])
async def test_low_requests_of_a_run_get_their_503_and_the_rest_goes(
    nats_server: NatsServer, sidecar_factory: Any, level: str
) -> None:
    # Before, one low request in a run sent the whole run message by message (requests at critical:
    # 0.1x the leaf node's intake); now the run is decided in bulk and each shed request is answered
    # with its 503 status (KPI-Refused: low_priority) on its own reply subject, in order.
    proc: SidecarProcess = sidecar_factory(flooded_config(nats_server))
    direct = await nats.connect(nats_server.url)
    _, msgs = await collect(direct, "bulk.svc")
    frames, low, others = [], [], []
    for i in range(200):
        priority = MIX[i % 20]
        frames.append(hpub("bulk.svc", priority, b"%d" % i, f"inbox.{i}"))
        (low if priority == "low" else others).append(i)
    async with held_at(proc, level, 1600 if level == "high" else 2600):
        sock = raw_client(proc.ports["nats"])
        sock.sendall(b"SUB inbox.> 7\r\n" + b"".join(frames) + b"PING\r\n")
        buf = b""
        deadline = time.monotonic() + 10
        while buf.count(b"HMSG inbox.") < len(low) or b"PONG" not in buf:
            assert time.monotonic() < deadline, buf[-300:]
            buf += sock.recv(65536)
        sock.close()
        assert proc.status()["degradationLevel"] == level
    statuses = [line for line in buf.split(b"\r\n") if line.startswith(b"HMSG ")]
    assert [line.split()[1] for line in statuses] == [b"inbox.%d" % i for i in low]
    assert buf.count(b"NATS/1.0 503") == buf.count(b"KPI-Refused: low_priority") == len(low)
    await asyncio.sleep(0.5)
    await settle(direct)
    forwarded = [int(m.data) for m in msgs]
    assert sorted(forwarded) == others  # the medium, high and critical ones (requests are never sampled)
    assert all(m.reply == f"inbox.{int(m.data)}" for m in msgs)  # requests still, replies kept
    assert proc.status()["refusedRequests"].get("low_priority") == len(low)
    await direct.close()


@pytest.mark.parametrize("level", ["none", "high"])
async def test_critical_messages_of_a_run_wait_for_an_open_breaker_and_go_when_it_closes(
    nats_server: NatsServer, sidecar_factory: Any, level: str
) -> None:
    # The open breaker's data is shed, its critical messages are parked (not written, not lost) and go
    # once it is closed; the other subject's messages go at once. At high the run is decided in bulk
    # (the critical group PARKED), at none message by message: the same outcome.
    proc: SidecarProcess = sidecar_factory(flooded_config(nats_server))
    direct = await nats.connect(nats_server.url)
    _, msgs = await collect(direct, "bulk.>")
    proc.post("/api/backpressure/circuit-breaker", {"subject": "bulk.broken", "action": "open"})
    frames = []
    for i in range(100):
        frames.append(hpub("bulk.broken", "critical" if i % 10 == 0 else "high", b"b%d" % i))
        frames.append(hpub("bulk.fine", "high", b"f%d" % i))
    async with held_at(proc, level, 1600 if level == "high" else 0):
        before = proc.status()["droppedByReason"].get("circuit_breaker", 0)
        sock = raw_client(proc.ports["nats"])
        sock.sendall(b"".join(frames))
        finish(sock)
        await asyncio.sleep(0.5)
        await settle(direct)
        assert [m.data for m in msgs] == [b"f%d" % i for i in range(100)]
        status = proc.status()
        assert status["droppedByReason"].get("circuit_breaker", 0) - before == 90
        detailed = proc.get("/api/backpressure/health/detailed")["data"]
        assert detailed["components"]["queue"]["parked"] == 10
        assert proc.status()["degradationLevel"] == level
    proc.post("/api/backpressure/circuit-breaker", {"subject": "bulk.broken", "action": "close"})
    deadline = time.monotonic() + 5
    while len(msgs) < 110 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [m.data for m in msgs[100:]] == [b"b%d" % i for i in range(0, 100, 10)]
    assert all(m.headers.get("Nats-Msg-Id") for m in msgs[100:])
    await direct.close()
