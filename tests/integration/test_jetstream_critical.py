"""Critical messages under `delivery: jetstream` in bulk, against a real nats-server with JetStream.

A raw application pipelines tens of thousands of PUBs that a `delivery: jetstream` rule makes critical:
the sidecar stamps each with its Nats-Msg-Id and PubAck reply (in C for a run), keeps at most
`spool.maxPendingAcks` awaiting their PubAck, and, while the PubAcks come back, leaves the rest in the
application's socket (its connection is not read: `kpi_sidecar_puback_window_holds_total`) rather than in
its queue or its disk spool. Its own burst must not read as a slow upstream (`upstream_latency`): only
PubAcks of messages written with the upstream quiet are round-trip samples. The same flows run with the
seed's default configuration, alone and while a flood holds the level at high and critical.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from tests.conftest import NatsServer, SidecarProcess, sidecar_config
from tests.flood import flood_at

pytestmark = pytest.mark.slow

RULES = [{"subject": "pay.>", "priority": "critical", "delivery": "jetstream"}]


def raw_burst(port: int, subject: str, count: int) -> None:
    """`count` PUBs with payloads "0".."count-1", pipelined in 256 KiB writes, then PING/PONG."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
    batch: list[bytes] = []
    size = 0
    for i in range(count):
        payload = b"%d" % i
        frame = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
        batch.append(frame)
        size += len(frame)
        if size >= 256 * 1024:
            sock.sendall(b"".join(batch))
            batch, size = [], 0
    sock.sendall(b"".join(batch) + b"PING\r\n")
    buf = b""
    sock.settimeout(60)
    while b"PONG" not in buf:
        buf += sock.recv(4096)
    sock.close()


async def stored(url: str, stream: str, want: int, timeout: float) -> int:
    nc = await nats.connect(url)
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = (await js.stream_info(stream)).state.messages
        if count >= want:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    return count


async def add_stream(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(StreamConfig(name="PAY", subjects=["pay.>"]))
    await nc.close()


def dropped_subjects(proc: SidecarProcess) -> set[str]:
    """Subjects with a dropped message (kpi_streaming_messages_dropped_total)."""
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {
        line.partition('subject="')[2].partition('"')[0]
        for line in lines
        if line.startswith("kpi_streaming_messages_dropped_total{") and float(line.rsplit(" ", 1)[1]) > 0
    }


def transitions(proc: SidecarProcess) -> list[dict[str, Any]]:
    return proc.get("/api/backpressure/analytics/degradation-history")["data"]["transitions"]


@pytest.fixture
def js_server(nats_factory: Any) -> NatsServer:
    return nats_factory(jetstream=True)


async def test_a_burst_of_critical_messages_is_not_a_slow_upstream(
    js_server: NatsServer, sidecar_factory: Any
) -> None:
    """50,000 critical messages pipelined by one application: each stored once, and the level stays at none
    (before: the PubAcks of messages written behind thousands in flight were RTT samples, and the
    sidecar's own burst raised the level to critical through upstream_latency, shedding everyone else)."""
    await add_stream(js_server.url)
    # Only the rate and CPU thresholds raised (the burst is far past the seed's 1,000 msg/s, and one core
    # saturates on purpose): what is left to react is the latency signal, the queue and memory.
    config = sidecar_config(js_server.url, policies=RULES)
    config["backpressure"] = {"maxPublishRate": 10_000_000, "maxCpuUsagePercent": 1000}
    proc = sidecar_factory(config)
    total = 50_000
    await asyncio.to_thread(raw_burst, proc.ports["nats"], "pay.in", total)
    assert await stored(js_server.url, "PAY", total, timeout=60) == total
    await asyncio.sleep(1.5)  # a tick or two: the level follows the signals once a second
    assert [t for t in transitions(proc) if t["dominantSignal"] == "upstream_latency"] == []
    status = proc.status()
    assert status["degradationLevel"] == "none", (
        status["dominantSignal"],
        status["currentMemoryMB"],
        [(t["to"], t["loadPercent"], t["dominantSignal"]) for t in transitions(proc)],
    )
    assert status["signalDetail"]["rtt"]["puback"]["samples"] >= 1


async def test_the_puback_window_holds_the_application_not_the_queue(
    js_server: NatsServer, sidecar_factory: Any
) -> None:
    """A burst ten times the PubAck window: the application waits in its socket while PubAcks come back;
    nothing goes to the queue or the disk spool (before: past the window every message was queued one by
    one, and past maxQueueSize spooled), and every message is stored once."""
    await add_stream(js_server.url)
    config = sidecar_config(js_server.url, policies=RULES)
    config["backpressure"] = {"maxPublishRate": 10_000_000, "maxCpuUsagePercent": 1000, "maxQueueSize": 2000}
    config["spool"] = {**config.get("spool", {}), "maxPendingAcks": 2000}
    proc = sidecar_factory(config)
    total = 20_000
    await asyncio.to_thread(raw_burst, proc.ports["nats"], "pay.in", total)
    assert await stored(js_server.url, "PAY", total, timeout=60) == total
    assert await payloads(js_server.url, total) == sorted(b"%d" % i for i in range(total))
    status = proc.status()
    assert status["spooledMessages"] == 0 and status["droppedMessages"] == 0, status
    assert [t for t in transitions(proc) if t["dominantSignal"] == "queue"] == []
    assert proc.metric("kpi_sidecar_puback_window_holds_total") > 0
    assert proc.metric("kpi_sidecar_pending_acks") == 0


@pytest.mark.parametrize("level", [None, "high", "critical"])
async def test_critical_jetstream_messages_at_every_level(
    js_server: NatsServer, sidecar_factory: Any, level: str | None
) -> None:
    """The seed's default configuration: 3,000 critical messages from an unmodified nats-py application,
    alone and while a flood holds the level at high or critical: all stored, none twice."""
    await add_stream(js_server.url)
    config = sidecar_config(js_server.url, policies=RULES)
    config["backpressure"] = {}  # the seed's values: maxPublishRate 1000, maxQueueSize 10000, ...
    proc = sidecar_factory(config)
    total = 3000
    with flood_at(proc, level, held=False):  # the critical messages add to the publish rate
        app = await nats.connect(proc.nats_url)
        for i in range(total):
            await app.publish("pay.in", str(i).encode())
        await app.flush(timeout=30)
        assert await stored(js_server.url, "PAY", total, timeout=60) == total
        await app.close()
    assert await payloads(js_server.url, total) == sorted(str(i).encode() for i in range(total))


async def payloads(url: str, count: int) -> list[bytes]:
    """The stream's payloads (it holds `count`), sorted: each once means none lost and none twice."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    assert (await js.stream_info("PAY")).state.messages == count
    got = [(await js.get_msg("PAY", seq)).data for seq in range(1, count + 1)]
    await nc.close()
    return sorted(got)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [None, "high", "critical"])
async def test_a_stream_that_stops_answering_holds_only_its_own_messages(
    js_server: NatsServer, sidecar_factory: Any, level: str | None
) -> None:
    """No stream captures the critical subject (every PubAck is a 503): its messages wait, resent on the
    ack timeout, never dropped; the same application's other messages (high: neither sampled nor shed),
    and another application's, still go through (the PubAck window holds critical messages, not the
    whole upstream connection). With the seed's configuration, alone and under a flood at high and
    critical."""
    config = sidecar_config(js_server.url, policies=[*RULES, {"subject": "data.>", "priority": "high"}])
    config["backpressure"] = {}  # the seed's values: maxPublishRate 1000, maxQueueSize 10000, ...
    config["spool"] = {**config.get("spool", {}), "maxPendingAcks": 100, "ackTimeoutMs": 1000}
    proc = sidecar_factory(config)
    with flood_at(proc, level, held=False):
        await _others_go_through(js_server, proc)


async def _others_go_through(js_server: NatsServer, proc: SidecarProcess) -> None:
    watcher = await nats.connect(js_server.url)
    got: list[bytes] = []

    async def on(msg: Any) -> None:
        got.append(msg.data)

    await watcher.subscribe("data.>", cb=on)
    await watcher.flush()
    app = await nats.connect(proc.nats_url)
    other = await nats.connect(proc.nats_url)
    for i in range(500):
        await app.publish("pay.in", str(i).encode())
    for i in range(50):
        await app.publish("data.same", str(i).encode())
        await other.publish("data.other", str(i).encode())
    await app.flush(timeout=10)
    await other.flush(timeout=10)
    deadline = time.monotonic() + 10
    while len(got) < 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(got) == 100, f"{len(got)} of 100 other messages went through"
    status = proc.status()
    assert dropped_subjects(proc) <= {"flood.bulk"}  # the flood is sampled at high and critical
    assert (
        proc.metric("kpi_sidecar_pending_acks") + status["currentQueueSize"] + status["spooledMessages"]
        >= 500
    )
    for nc in (app, other, watcher):
        await nc.close()


@pytest.mark.parametrize("level", [None, "high", "critical"])
async def test_http_batches_with_critical_items_at_every_level(
    js_server: NatsServer, sidecar_factory: Any, level: str | None
) -> None:
    """The seed's configuration; NDJSON batches of 500 items posted to the HTTP ingest port, one in ten
    critical (`delivery: jetstream`): every critical item is stored once, whatever the level, and each
    item's answer says what became of it (the answers add up to what was posted)."""
    await add_stream(js_server.url)
    config = sidecar_config(js_server.url, policies=RULES)
    config["backpressure"] = {}
    proc = sidecar_factory(config)
    batches, per = 4, 500
    with flood_at(proc, level, held=False):
        summary: dict[str, int] = {}
        for b in range(batches):
            lines = [
                json.dumps(
                    {"subject": "pay.in", "data": f"{b}.{i}"}
                    if i % 10 == 0
                    else {
                        "subject": "http.mix",
                        "data": f"{b}.{i}",
                        "priority": ("low", "medium", "high")[i % 3],
                    }
                )
                for i in range(per)
            ]
            req = urllib.request.Request(
                proc.http_url + "/publish",
                data="\n".join(lines).encode(),
                method="POST",
                headers={"Content-Type": "application/x-ndjson"},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                answer = json.loads(resp.read())
            assert resp.status == 202
            results = answer["data"]["results"]
            assert len(results) == per
            for r in results[::10]:
                assert r["status"] == 202 and r["result"] in ("forwarded", "queued"), r
            for key, count in answer["data"]["summary"].items():
                summary[key] = summary.get(key, 0) + count
        assert sum(summary.values()) == batches * per
        total = batches * per // 10
        assert await stored(js_server.url, "PAY", total, timeout=60) == total
    want = sorted(f"{b}.{i}".encode() for b in range(batches) for i in range(0, per, 10))
    assert await payloads(js_server.url, total) == want
