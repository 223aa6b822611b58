"""Graceful degradation against a real nats-server: a stepped overload with a priority mix."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import nats

from tests.conftest import NatsServer, SidecarProcess, settle, sidecar_config

CEILING = 400  # maxPublishRate of the test sidecar
# (multiple of the ceiling, seconds): level none, then medium/high, then critical.
PHASES = [(0.5, 3.0), (1.75, 3.0), (6.0, 3.0)]


async def publish_phases(nc: nats.NATS) -> Counter[tuple[int, str, bool]]:
    """Publish each phase at its rate in 20 ms slices; count what was sent per (phase, class, settled)."""
    sent: Counter[tuple[int, str, bool]] = Counter()
    seq = 0
    for phase, (multiple, duration) in enumerate(PHASES):
        rate = CEILING * multiple
        start = time.monotonic()
        slice_s = 0.02
        n_slices = int(duration / slice_s)
        for k in range(n_slices):
            # The level follows the rate within about a second: count a phase's second half as "settled".
            settled = k >= n_slices // 2
            for _ in range(max(1, int(rate * slice_s))):
                seq += 1
                cls = "critical" if seq % 10 == 0 else ("low" if seq % 2 else "medium")
                await nc.publish(f"ov.{cls}.data", f"{phase}:{int(settled)}:{seq}".encode())
                sent[(phase, cls, settled)] += 1
            await nc.flush()
            delay = start + (k + 1) * slice_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    return sent


async def test_stepped_overload_sheds_in_order_keeps_critical_and_recovers(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    config = sidecar_config(
        nats_server.url,
        backpressure={
            "maxPublishRate": CEILING,
            "maxQueueSize": 2000,
            "maxCpuUsagePercent": 1000,  # CPU off: this test is about the publish-rate signal
            "maxMemoryUsageMB": 4096,
            "recoveryDelayMs": 1000,
            "breakerCriticalTopSubjects": 0,  # breakers have their own tests; isolate shedding here
        },
        policies=[
            {"subject": "ov.critical.>", "priority": "critical"},
            {"subject": "ov.low.>", "priority": "low"},
        ],
    )
    proc: SidecarProcess = sidecar_factory(config)
    received: Counter[tuple[int, str, bool]] = Counter()
    direct = await nats.connect(nats_server.url)

    async def count(msg: Any) -> None:
        phase, settled, _ = msg.data.decode().split(":")
        received[(int(phase), msg.subject.split(".")[1], settled == "1")] += 1

    await direct.subscribe("ov.>", cb=count)
    await settle(direct)
    levels: list[str] = []
    polling = True

    async def poll_levels() -> None:
        while polling:
            levels.append(await asyncio.to_thread(lambda: proc.status()["degradationLevel"]))
            await asyncio.sleep(0.2)

    poller = asyncio.create_task(poll_levels())
    app = await nats.connect(proc.nats_url)
    sent = await publish_phases(app)
    await app.flush()

    # Critical: every one delivered (they wait in the queue under the ceiling, never shed).
    critical_sent = sum(n for (_, cls, _), n in sent.items() if cls == "critical")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sum(n for (_, cls, _), n in received.items() if cls == "critical") >= critical_sent:
            break
        await asyncio.sleep(0.1)
    assert sum(n for (_, cls, _), n in received.items() if cls == "critical") == critical_sent

    # Back to none once the load stops (one level per recoveryDelayMs once below the thresholds), with
    # the queue drained: the medium messages kept at 6x wait behind the ceiling for several seconds.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        status = proc.status()
        if status["degradationLevel"] == "none" and status["currentQueueSize"] == 0:
            break
        await asyncio.sleep(0.2)
    polling = False
    await poller
    await asyncio.sleep(0.3)

    def ratio(phase: int, cls: str) -> float:
        return received[(phase, cls, True)] / sent[(phase, cls, True)]

    # Level none under half the ceiling: nothing shed.
    assert ratio(0, "low") == 1.0 and ratio(0, "medium") == 1.0
    # Above the ceiling, low goes before medium; at 6x low is gone while medium still flows (sampled).
    assert ratio(1, "low") <= ratio(1, "medium")
    assert ratio(2, "low") == 0.0
    assert ratio(2, "medium") > 0.0
    assert {"high", "critical"} & set(levels)
    status = proc.status()
    assert status["degradationLevel"] == "none"
    # The books balance: every message received is forwarded, dropped, queued or spooled.
    assert status["receivedMessages"] == (
        status["forwardedMessages"]
        + status["droppedMessages"]
        + status["currentQueueSize"]
        + status["spooledMessages"]
    )
    assert status["receivedMessages"] == sum(sent.values())
    await direct.close()


async def test_envelope_rule_packs_messages_of_a_subject(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    from proxy.nats.envelope import unpack

    config = sidecar_config(nats_server.url, policies=[{"subject": "env.>", "batchMode": "envelope"}])
    proc: SidecarProcess = sidecar_factory(config)
    direct = await nats.connect(nats_server.url)
    envelopes: list[Any] = []

    async def on_msg(msg: Any) -> None:
        envelopes.append(msg)

    await direct.subscribe("env.>", cb=on_msg)
    await settle(direct)
    app = await nats.connect(proc.nats_url)
    for i in range(200):
        await app.publish("env.kpi", str(i).encode(), headers={"Seq": str(i)} if i % 2 else None)
    await app.publish("plain.kpi", b"not enveloped")
    await app.flush()
    deadline = time.monotonic() + 5
    unpacked: list[tuple[bytes | None, bytes]] = []
    while time.monotonic() < deadline:
        unpacked = [r for m in envelopes for r in unpack(m.data)]
        if len(unpacked) >= 200:
            break
        await asyncio.sleep(0.05)
    assert [payload for _, payload in unpacked] == [str(i).encode() for i in range(200)]
    assert all((head is not None) == bool(i % 2) for i, (head, _) in enumerate(unpacked))
    assert all(int(m.headers["KPI-Batch-Count"]) == len(unpack(m.data)) for m in envelopes)
    assert len(envelopes) < 200  # fewer, larger messages
    await app.close()
    await direct.close()
