"""Protocol roles at the seed's default configuration, alone and under a flood that holds the level at high or
critical: JetStream push and pull consumers, a KV watcher, request-reply both ways, recovery after a burst,
and the metric series replies leave behind. Real nats-server, unmodified nats-py."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from typing import Any

import nats
import pytest
from nats.js.api import ConsumerConfig

from tests.conftest import NatsServer, SidecarProcess, settle, sidecar_config
from tests.flood import Flood, flood_at, level_of

pytestmark = pytest.mark.slow

CEILING = 1000  # the seed's maxPublishRate
MESSAGES = 4000


async def fill_stream(direct: nats.NATS, subject: str, count: int) -> None:
    js = direct.jetstream()
    await js.add_stream(name="JOBS", subjects=["jobs.>"])
    for i in range(count):
        await direct.publish(subject, str(i).encode())
        if i % 500 == 499:
            await direct.flush()
    await direct.flush()
    info = await js.stream_info("JOBS")
    assert info.state.messages == count


async def consumer_done(direct: nats.NATS, durable: str) -> bool:
    info = await direct.jetstream().consumer_info("JOBS", durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


@pytest.mark.parametrize("level", [None, "high", "critical"])
async def test_push_consumer_acks_are_never_shed(seed_sidecar: SidecarProcess, level: str | None) -> None:
    direct = await nats.connect(seed_sidecar.upstream.url)  # type: ignore[attr-defined]
    await fill_stream(direct, "jobs.push", MESSAGES)
    with flood_at(seed_sidecar, level):
        app = await nats.connect(seed_sidecar.nats_url)
        deliveries = 0
        seen: set[bytes] = set()

        async def work(msg: Any) -> None:
            nonlocal deliveries
            deliveries += 1
            seen.add(msg.data)
            await msg.ack()

        js = app.jetstream()
        await js.subscribe(
            "jobs.push", durable="worker", cb=work, manual_ack=True, config=ConsumerConfig(ack_wait=2.0)
        )
        deadline = time.monotonic() + 40
        while not (len(seen) == MESSAGES and await consumer_done(direct, "worker")):
            assert time.monotonic() < deadline, f"{len(seen)} of {MESSAGES} seen, {deliveries} deliveries"
            await asyncio.sleep(0.2)
        await app.close()
    redeliveries = deliveries - MESSAGES
    assert redeliveries <= MESSAGES // 100, f"{redeliveries} redeliveries"
    await direct.close()


@pytest.mark.parametrize("level", [None, "critical"])
async def test_pull_consumer_fetches_and_acks_under_load(
    seed_sidecar: SidecarProcess, level: str | None
) -> None:
    direct = await nats.connect(seed_sidecar.upstream.url)  # type: ignore[attr-defined]
    await fill_stream(direct, "jobs.pull", MESSAGES)
    with flood_at(seed_sidecar, level):
        app = await nats.connect(seed_sidecar.nats_url)
        js = app.jetstream()
        psub = await js.pull_subscribe("jobs.pull", durable="puller", config=ConsumerConfig(ack_wait=2.0))
        deliveries = 0
        failed_fetches = 0
        seen: set[bytes] = set()
        deadline = time.monotonic() + 40
        while not (len(seen) == MESSAGES and await consumer_done(direct, "puller")):
            assert time.monotonic() < deadline, f"{len(seen)} of {MESSAGES} seen, {failed_fetches} failed"
            try:
                msgs = await psub.fetch(200, timeout=1.0)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.APIError):
                failed_fetches += 1
                continue
            for msg in msgs:
                deliveries += 1
                seen.add(msg.data)
                await msg.ack()
        await app.close()
    assert deliveries - MESSAGES <= MESSAGES // 100, f"{deliveries - MESSAGES} redeliveries"
    assert failed_fetches <= 2, f"{failed_fetches} fetches failed"
    await direct.close()


@pytest.mark.parametrize("level", ["high", "critical"])
async def test_kv_watcher_converges_during_a_flood(seed_sidecar: SidecarProcess, level: str) -> None:
    keys = 3000
    direct = await nats.connect(seed_sidecar.upstream.url)  # type: ignore[attr-defined]
    kv = await direct.jetstream().create_key_value(bucket="cfg")
    value = b"v" * 2048  # large enough for the server to ask the watcher for flow control
    for i in range(keys // 2):  # half before the watcher starts (its initial replay), half after
        await kv.put(f"k{i}", value)
    with flood_at(seed_sidecar, level):
        app = await nats.connect(seed_sidecar.nats_url)
        watched = await (await app.jetstream().key_value("cfg")).watchall()
        for i in range(keys // 2, keys):
            await kv.put(f"k{i}", value)
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while len(seen) < keys:
            assert time.monotonic() < deadline, f"watcher saw {len(seen)} of {keys} keys"
            with contextlib.suppress(nats.errors.TimeoutError):
                entry = await watched.updates(timeout=1.0)
                if entry is not None:
                    seen.add(entry.key)
        await watched.stop()
        await app.close()
    await direct.close()


async def answer(msg: Any) -> None:
    await msg.respond(b"pong:" + msg.data)


async def ask(requester: nats.NATS, subject: str, count: int, every_s: float) -> int:
    answered = 0
    for i in range(count):
        with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
            reply = await requester.request(subject, str(i).encode(), timeout=1.0)
            answered += reply.data == f"pong:{i}".encode()
        await asyncio.sleep(every_s)
    return answered


@pytest.mark.parametrize("level", ["high", "critical"])
async def test_quiet_request_reply_both_ways_during_a_flood(seed_sidecar: SidecarProcess, level: str) -> None:
    direct = await nats.connect(seed_sidecar.upstream.url)  # type: ignore[attr-defined]
    app = await nats.connect(seed_sidecar.nats_url)
    await app.subscribe("svc.behind", cb=answer)  # a responder behind the sidecar
    await direct.subscribe("svc.direct", cb=answer)  # a service the application calls through the sidecar
    await settle(app)
    await settle(direct)
    with flood_at(seed_sidecar, level):
        replies_out, answers_in = await asyncio.gather(
            ask(direct, "svc.behind", 100, 0.05), ask(app, "svc.direct", 100, 0.05)
        )
    assert replies_out >= 95, f"{replies_out} of 100 replies from behind the sidecar arrived"
    assert answers_in >= 95, f"{answers_in} of 100 requests through the sidecar were answered"
    await app.close()
    await direct.close()


async def test_a_load_below_the_recovery_threshold_is_untouched_soon_after_a_burst(
    seed_sidecar: SidecarProcess,
) -> None:
    delay_s = 5.0  # the seed's recoveryDelayMs
    steady_rate = 0.6 * CEILING
    direct = await nats.connect(seed_sidecar.upstream.url)  # type: ignore[attr-defined]
    received: set[int] = set()

    async def count(msg: Any) -> None:
        received.add(int(msg.data))

    await direct.subscribe("steady.data", cb=count)
    await settle(direct)
    app = await nats.connect(seed_sidecar.nats_url)
    sent_at: dict[int, float] = {}
    seq = 0
    burst_end = 0.0

    async def steady(until: float) -> None:
        nonlocal seq
        start = time.monotonic()
        k = 0
        while time.monotonic() < until:
            k += 1
            for _ in range(int(steady_rate * 0.02)):
                seq += 1
                sent_at[seq] = time.monotonic()
                await app.publish("steady.data", str(seq).encode())
            await app.flush()
            await asyncio.sleep(max(0.0, start + k * 0.02 - time.monotonic()))

    async def burst() -> None:
        nonlocal burst_end
        await asyncio.sleep(3.0)
        with Flood(seed_sidecar.ports["nats"], "burst.data", 3 * CEILING):
            await asyncio.sleep(3.0)
        burst_end = time.monotonic()

    t0 = time.monotonic()
    await asyncio.gather(steady(t0 + 3.0 + 3.0 + 2 * delay_s + 5.0), burst())
    await settle(app)
    await asyncio.sleep(0.5)
    # Sent a second or more before the flood starts (at t0 + 3 s): a message sent just before it may
    # be read after the flood's first messages (event loop lag on a busy machine) and shed with them.
    before = [s for s, at in sent_at.items() if at < t0 + 2.0]
    window = [s for s, at in sent_at.items() if burst_end + 2 * delay_s <= at]
    assert window, "the steady publisher did not run long enough"
    assert all(s in received for s in before), "the steady load lost messages before the burst"
    lost = [s for s in window if s not in received]
    assert not lost, f"{len(lost)} of {len(window)} messages lost 2 x recoveryDelayMs after the burst"
    assert level_of(seed_sidecar) == "none"
    await app.close()
    await direct.close()


async def test_replies_leave_no_per_inbox_series(seed_sidecar: SidecarProcess) -> None:
    direct = await nats.connect(seed_sidecar.upstream.url)  # type: ignore[attr-defined]
    app = await nats.connect(seed_sidecar.nats_url)
    await app.subscribe("svc.labels", cb=answer)
    await settle(app)
    answered = 0
    for i in range(600):
        reply = await direct.request("svc.labels", str(i).encode(), timeout=2.0)
        answered += reply.data == f"pong:{i}".encode()
    assert answered == 600
    with urllib.request.urlopen(seed_sidecar.admin_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    inbox_series = [line for line in text.splitlines() if "_INBOX" in line]
    assert len(inbox_series) <= 3, f"{len(inbox_series)} series name an inbox"
    await app.close()
    await direct.close()


async def test_spooled_critical_messages_go_upstream_before_queued_lower_priorities(
    nats_factory: Any, sidecar_factory: Any, workdir: Any
) -> None:
    """The development preset's ceiling (100 msg/s); an outage long enough for critical messages to go to
    disk while medium ones wait in the queue: once the upstream is back, the critical ones come first."""
    upstream = nats_factory()
    config = sidecar_config(
        upstream.url,
        backpressure={"maxPublishRate": 100, "maxQueueSize": 1000, "enableSampling": False},
        policies=[{"subject": "inv.critical.>", "priority": "critical"}],
        spool={"path": str(workdir / "spool"), "upstreamDownThresholdMs": 300},
    )
    proc = sidecar_factory(config)
    order: list[str] = []

    async def record(msg: Any) -> None:
        order.append(msg.subject.split(".")[1])

    reader = await nats.connect(proc.nats_url)  # behind the sidecar: resubscribed on the reconnect
    await reader.subscribe("inv.>", cb=record)
    await settle(reader)
    app = await nats.connect(proc.nats_url)
    upstream.stop()
    deadline = time.monotonic() + 10
    while proc.status()["upstreamConnected"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for i in range(300):
        await app.publish(f"inv.medium.{i}", b"m")
        if i % 3 == 0:
            await app.publish(f"inv.critical.{i}", b"c")
    await app.flush()
    while proc.status()["spoolMessages"] < 100:
        assert time.monotonic() < deadline, proc.status()
        await asyncio.sleep(0.05)
    upstream.start()
    deadline = time.monotonic() + 30
    while len(order) < 400:
        assert time.monotonic() < deadline, f"{len(order)} of 400 delivered"
        await asyncio.sleep(0.1)
    assert order.count("critical") == 100
    last_critical = max(i for i, kind in enumerate(order) if kind == "critical")
    assert "medium" not in order[:last_critical], "medium messages overtook spooled critical ones"
    await app.close()
    await reader.close()


async def test_requests_do_not_wait_behind_bulk_data_at_the_rate_ceiling(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    """Sampling and breakers off: the rate ceiling alone holds a 3x flood (the queue fills, then sheds by
    queue_full); requests and replies still go ahead of the queued data."""
    config = sidecar_config(nats_server.url)
    config["backpressure"] = {"enableSampling": False, "enableCircuitBreaker": False}
    proc = sidecar_factory(config)
    direct = await nats.connect(nats_server.url)
    app = await nats.connect(proc.nats_url)
    await app.subscribe("svc.behind", cb=answer)
    await direct.subscribe("svc.direct", cb=answer)
    await settle(app)
    await settle(direct)
    with Flood(proc.ports["nats"], "flood.bulk", 3 * CEILING):
        deadline = time.monotonic() + 15
        while proc.status()["currentQueueSize"] < 5000:
            assert time.monotonic() < deadline, proc.status()
            await asyncio.sleep(0.1)
        replies_out, answers_in = await asyncio.gather(
            ask(direct, "svc.behind", 100, 0.05), ask(app, "svc.direct", 100, 0.05)
        )
    assert replies_out >= 95, f"{replies_out} of 100 replies from behind the sidecar arrived"
    assert answers_in >= 95, f"{answers_in} of 100 requests through the sidecar were answered"
    await app.close()
    await direct.close()
