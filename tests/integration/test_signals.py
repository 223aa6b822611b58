"""The signals of issue #16 against a real nats-server: a slow upstream (a delaying TCP relay), a JetStream
stream near full, and a steady queue ramp that the forecast sees coming."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from tests.conftest import NatsServer, SidecarProcess, eventually, free_port, sidecar_config
from tests.flood import flood_at


class DelayingRelay:
    """A TCP relay between the sidecar and nats-server, in its own thread and event loop, that holds the
    server's bytes back for `delay` seconds (in order) before passing them on: a slow cluster."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delayed: bool) -> None:
            # A delayed direction goes through a queue of (due time, bytes) so that order is kept.
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def release() -> None:
                while True:
                    due, data = await queue.get()
                    wait = due - self.loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    dst.write(data)
                    await dst.drain()

            releaser = asyncio.ensure_future(release()) if delayed else None
            try:
                while data := await src.read(65536):
                    if releaser is not None:
                        queue.put_nowait((self.loop.time() + self.delay, data))
                    else:
                        dst.write(data)
                        await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if releaser is not None:
                    releaser.cancel()
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def _metric(proc: SidecarProcess, name: str, labels: str) -> float | None:
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.split()[1])
    return None


async def test_a_slow_upstream_raises_the_level_through_upstream_latency(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    relay = DelayingRelay(nats_server.port)
    try:
        proc = sidecar_factory(
            sidecar_config(
                relay.url,
                upstream={"pingIntervalMs": 200, "maxPingsOut": 50},
                backpressure={
                    "minRttSamples": 5,
                    "upstreamLatencyRatio": 4,
                    "upstreamLatencyFloorMs": 20,
                    "recoveryDelayMs": 1000,
                    "maxCpuUsagePercent": 1000,
                },
            )
        )
        await eventually(lambda: proc.status()["signalDetail"]["rtt"]["ping"]["samples"] >= 8, timeout=10)
        status = proc.status()
        assert status["degradationLevel"] == "none"
        baseline_ms = status["signalDetail"]["rtt"]["ping"]["baselineMs"]
        assert baseline_ms is not None and baseline_ms < 20
        # Messages keep flowing through the sidecar meanwhile: the cluster is slow, not down.
        nc = await nats.connect(proc.nats_url)
        received: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            received.append(msg.data)

        sub = await nats.connect(nats_server.url)
        await sub.subscribe("slow.>", cb=on_msg)
        await sub.flush()

        relay.delay = 0.25  # every answer of the server now takes 250 ms more
        await eventually(
            lambda: (
                (s := proc.status())["dominantSignal"] == "upstream_latency"
                and s["degradationLevelValue"] >= 2
            ),
            timeout=15,
        )
        status = proc.status()
        assert status["degradationLevelValue"] >= 2, status  # medium or above
        signals = status["signals"]
        assert signals["upstreamLatency"] >= 100
        assert signals["memory"] < 70 and signals["queue"] < 70 and signals["cpu"] < 70, signals
        assert "upstream RTT" in status["explanation"]
        rtt = _metric(proc, "kpi_sidecar_upstream_rtt_seconds", 'source="ping"')
        assert rtt is not None and rtt >= 0.1
        health = proc.get("/api/backpressure/health/detailed")["data"]
        assert health["components"]["signals"]["drivingSignal"] == "upstream_latency"
        recs = proc.get("/api/backpressure/analytics/recommendations")["data"]["recommendations"]
        assert "upstream-latency" in [r["id"] for r in recs]
        for i in range(20):
            await nc.publish("slow.x", str(i).encode(), headers={"KPI-Priority": "high"})
        await nc.flush()

        relay.delay = 0.0  # the cluster recovers: back to none after the recovery delay
        await eventually(lambda: proc.status()["degradationLevel"] == "none", timeout=20)
        await eventually(lambda: len(received) == 20, timeout=10)
        await nc.close()
        await sub.close()
    finally:
        relay.close()


async def test_a_stream_near_full_raises_the_level_of_its_rules_subjects(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="ORDERS", subjects=["orders.>"], max_msgs=100, discard=DiscardPolicy.NEW)
    )
    for i in range(96):
        await js.publish("orders.seed", str(i).encode())
    proc = sidecar_factory(
        sidecar_config(
            nats_server.url,
            policies=[{"subject": "orders.>", "priority": "low", "delivery": "jetstream"}],
            backpressure={"streamPollIntervalMs": 500, "streamFillThreshold": 0.9, "enableBatching": False},
        )
    )

    def orders() -> dict[str, Any] | None:
        streams = proc.status()["signalDetail"]["streams"]
        return next((s for s in streams if s["name"] == "ORDERS"), None)

    await eventually(lambda: orders() is not None, timeout=10)
    stream = orders()
    assert stream is not None
    assert (stream["msgs"], stream["maxMsgs"], stream["discard"], stream["priority"]) == (
        96,
        100,
        "new",
        "low",
    )
    await eventually(lambda: proc.status()["signalDetail"]["classLevels"] == {"low": "high"}, timeout=10)
    status = proc.status()
    assert status["degradationLevel"] == "none"  # the sidecar's own level does not move
    assert "stream ORDERS 96% full: low messages at level high" in status["explanation"]
    assert _metric(proc, "kpi_sidecar_stream_fill_ratio", 'priority="low",stream="ORDERS"') == 0.96
    assert _metric(proc, "kpi_sidecar_class_level", 'priority="low"') == 3

    # Low-priority messages are shed by their class's level (high sheds low), medium ones go through.
    client = await nats.connect(proc.nats_url)
    got: list[str] = []

    async def on_msg(msg: Any) -> None:
        got.append(msg.subject)

    await nc.subscribe("other.>", cb=on_msg)
    await nc.flush()
    for i in range(10):
        await client.publish("orders.new", str(i).encode())
        await client.publish("other.x", str(i).encode())
    await client.flush()
    await eventually(lambda: len(got) == 10, timeout=10)
    assert proc.status()["droppedByReason"].get("low_priority") == 10
    info = await js.stream_info("ORDERS")
    assert info.state.messages == 96  # nothing more got in

    # Full with discard: new: reported as refusing.
    for i in range(4):
        await js.publish("orders.seed", str(i).encode())
    await eventually(
        lambda: (
            proc.get("/api/backpressure/health/detailed")["data"]["components"]["signals"][
                "streamsRefusingNew"
            ]
            == ["ORDERS"]
        ),
        timeout=10,
    )
    assert _metric(proc, "kpi_sidecar_stream_refusing_new", 'stream="ORDERS"') == 1
    await eventually(lambda: proc.status()["signalDetail"]["classLevels"] == {"low": "critical"}, timeout=5)
    recs = proc.get("/api/backpressure/analytics/recommendations")["data"]["recommendations"]
    assert [r["severity"] for r in recs if r["id"] == "stream-fill"] == ["critical"]
    # The stream is purged: the class recovers.
    await js.purge_stream("ORDERS")
    await eventually(lambda: proc.status()["signalDetail"]["classLevels"] == {}, timeout=20)
    await client.close()
    await nc.close()


async def test_pub_acks_feed_their_own_round_trip(nats_server: NatsServer, sidecar_factory: Any) -> None:
    """Under `delivery: jetstream` a critical message's PubAck is a second RTT source (publish -> PubAck:
    JetStream's storage included), shown apart from PING/PONG."""
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(StreamConfig(name="PAY", subjects=["pay.>"]))
    proc = sidecar_factory(
        sidecar_config(
            nats_server.url,
            policies=[{"subject": "pay.>", "priority": "critical", "delivery": "jetstream"}],
            backpressure={"minRttSamples": 5},
        )
    )
    app = await nats.connect(proc.nats_url)
    for i in range(20):
        await app.publish("pay.in", str(i).encode())
        await app.flush()
        await asyncio.sleep(0.02)
    # One message at a time is timed (the next once its PubAck is back: docs/signals.md), so a message
    # written while the last timed one is in flight is not a sample: at least minRttSamples of the 20.
    await eventually(lambda: proc.status()["signalDetail"]["rtt"]["puback"]["samples"] >= 5, timeout=10)
    puback = proc.status()["signalDetail"]["rtt"]["puback"]
    assert puback["rttMs"] is not None and 0 < puback["baselineMs"] <= puback["rttMs"]
    assert _metric(proc, "kpi_sidecar_upstream_rtt_seconds", 'source="puback"') is not None
    assert (await nc.jetstream().stream_info("PAY")).state.messages == 20
    await app.close()
    await nc.close()


@pytest.mark.parametrize("level", [None, "high", "critical"])
async def test_the_stream_monitor_reports_at_every_level(
    nats_server: NatsServer, sidecar_factory: Any, level: str | None
) -> None:
    """Its STREAM.INFO requests are the sidecar's own control traffic: a flood holding the seed's
    configuration at high or critical sheds data, never them."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"], max_msgs=100))
    config = sidecar_config(
        nats_server.url, policies=[{"subject": "orders.>", "priority": "low", "delivery": "jetstream"}]
    )
    config["backpressure"] = {"streamPollIntervalMs": 500}  # otherwise the seed's values
    proc = sidecar_factory(config)

    def msgs() -> int | None:
        streams = proc.status()["signalDetail"]["streams"]
        return streams[0]["msgs"] if streams else None

    for i in range(50):
        await js.publish("orders.seed", str(i).encode())
    await eventually(lambda: msgs() == 50, timeout=10)
    with flood_at(proc, level):
        for i in range(46):  # 96 % full: 160 % for the low class, high
            await js.publish("orders.seed", str(i).encode())
        deadline = time.monotonic() + 10
        while msgs() != 96 or proc.status()["signalDetail"]["classLevels"].get("low") != "high":
            assert time.monotonic() < deadline, proc.status()["signalDetail"]
            await asyncio.sleep(0.2)
        assert (
            proc.get("/api/backpressure/health/detailed")["data"]["components"]["signals"]["monitor"][
                "errors"
            ]
            == 0
        )
    await nc.close()


def _ramp_run(nats_server: NatsServer, sidecar_factory: Any, horizon_s: float) -> dict[str, Any]:
    """Upstream away, 60 high + 60 low messages a second into a 1000-message queue for 10 s; what
    happened: (queue size, level) every 0.25 s, /status and the queue by priority at the end."""
    proc = sidecar_factory(
        sidecar_config(
            nats_server.url,
            policies=[
                {"subject": "ramp.high", "priority": "high"},
                {"subject": "ramp.low", "priority": "low"},
            ],
            backpressure={
                "maxQueueSize": 1000,
                "predictionHorizonS": horizon_s,
                "predictionMinSamples": 3,
                "enableBatching": False,
                "maxCpuUsagePercent": 1000,
            },
            upstream={"reconnectWaitMs": 60_000, "maxReconnectWaitMs": 60_000},
        )
    )
    nats_server.stop()
    deadline = time.monotonic() + 10
    while proc.status()["upstreamConnected"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    seen: list[tuple[int, str]] = []

    async def publish() -> None:
        nc = await nats.connect(proc.nats_url)
        start = time.monotonic()
        for step in range(40):  # 10 s in quarters
            for i in range(15):
                await nc.publish("ramp.high", b"h%d" % i)
                await nc.publish("ramp.low", b"l%d" % i)
            await nc.flush()
            status = proc.status()
            seen.append((status["currentQueueSize"], status["degradationLevel"]))
            wait = start + (step + 1) * 0.25 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        await nc.close()

    asyncio.run(publish())
    status = proc.status()
    queued = proc.get("/api/backpressure/health/detailed")["data"]["components"]["queue"]["byPriority"]
    proc.kill()
    nats_server.start()
    return {"seen": seen, "status": status, "queued": queued}


def test_a_steady_queue_ramp_escalates_before_the_queue_is_full(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    predictive = _ramp_run(nats_server, sidecar_factory, horizon_s=10)
    reactive = _ramp_run(nats_server, sidecar_factory, horizon_s=0)
    levels = ["none", "low", "medium", "high", "critical"]

    def first(run: dict[str, Any], level: str) -> int | None:
        return next((q for q, lv in run["seen"] if levels.index(lv) >= levels.index(level)), None)

    # The forecast reaches medium (sampling) with room left in the queue; the reactive sidecar only once
    # the queue is full.
    at = first(predictive, "medium")
    assert at is not None and at < 800, predictive["seen"]
    assert first(reactive, "medium") in (None, 1000), reactive["seen"]
    p_dropped = predictive["status"]["droppedByReason"]
    r_dropped = reactive["status"]["droppedByReason"]
    # Nothing is evicted that the reactive level would have kept: the predictive run evicts nothing
    # (it shed low messages early, by level), the reactive one evicts once full.
    assert p_dropped.get("queue_full", 0) == 0, p_dropped
    assert r_dropped.get("queue_full", 0) > 0, r_dropped
    # And no high message was lost by either: all 600 queued, waiting for the upstream.
    for run in (predictive, reactive):
        assert run["queued"]["high"] == 600, run["queued"]
        assert run["status"]["currentQueueSize"] + sum(run["status"]["droppedByReason"].values()) == 1200


pytestmark = pytest.mark.timeout(180)
