"""No silent loss: a frozen upstream, drain and UNSUB, upstream permissions (real nats-server processes)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.conftest import NatsServer, SidecarProcess, eventually, settle, sidecar_config
from tests.faults.test_zero_loss import connect

PAYLOAD_PAD = b"x" * 1000


def dropped_by_reason(proc: SidecarProcess) -> dict[str, float]:
    """kpi_streaming_messages_dropped_total summed by reason."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("kpi_streaming_messages_dropped_total{"):
                labels, _, value = line.rpartition(" ")
                reason = labels.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = out.get(reason, 0) + float(value)
    return out


async def test_frozen_upstream_for_16s_loses_nothing_uncounted(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    # The case: nats-server SIGSTOPped for 16 s under `high`, `medium` and `critical` traffic of
    # 1 KB at 200 msg/s each. Before the fix, what was written into the dead socket before the stale
    # check fired was counted forwarded and never arrived (about 560 `high` ones, droppedMessages 0).
    upstream: NatsServer = nats_factory()
    limit = 262_144
    config = sidecar_config(
        upstream.url,
        policies=[
            {"subject": "hung.high", "priority": "high"},
            {"subject": "hung.crit", "priority": "critical"},
        ],
        upstream={
            "servers": [upstream.url],
            "pingIntervalMs": 2000,
            "maxPingsOut": 2,
            "reconnectWaitMs": 50,
            "maxReconnectWaitMs": 500,
            "maxUnconfirmedBytes": limit,
        },
        backpressure={"maxQueueSize": 10000, "maxPublishRate": 100000},
        spool={"path": str(workdir / "spool"), "upstreamDownThresholdMs": 5000},
    )
    proc: SidecarProcess = sidecar_factory(config)
    got: dict[str, Counter[int]] = {"high": Counter(), "medium": Counter(), "crit": Counter()}

    async def on_msg(msg: Any) -> None:
        got[msg.subject.rpartition(".")[2]][int(msg.data[:12])] += 1

    direct = await nats.connect(upstream.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await direct.subscribe("hung.*", cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await settle(direct)
    app = await connect(proc.nats_url)
    sent = 0
    unconfirmed_peak = 0.0

    async def publish_for(seconds: float) -> None:
        nonlocal sent, unconfirmed_peak
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for subject in ("hung.high", "hung.medium", "hung.crit"):
                await app.publish(subject, b"%012d" % sent + PAYLOAD_PAD)
            sent += 1
            if sent % 20 == 0:
                unconfirmed_peak = max(unconfirmed_peak, proc.metric("kpi_upstream_unconfirmed_bytes"))
            await asyncio.sleep(0.005)  # about 200 msg/s of each priority

    await publish_for(2)
    upstream.pause()
    try:
        await publish_for(16)
    finally:
        upstream.resume()
    await publish_for(2)
    await app.flush()
    everyone = set(range(sent))
    await eventually(lambda: set(got["high"]) == everyone and set(got["crit"]) == everyone, timeout=40)
    # Medium messages go after high and critical ones (spooled critical messages first of all): wait
    # until nothing is held any more.
    await eventually(lambda: not proc.status()["currentQueueSize"] and not proc.status()["spoolMessages"], 20)
    await settle(direct)
    status = proc.status()
    drops = dropped_by_reason(proc)
    missing_medium = everyone - set(got["medium"])
    # Medium messages are delivered or counted dropped (with a reason); high and critical all arrive.
    assert len(missing_medium) <= status["droppedMessages"], (len(missing_medium), drops)
    assert status["receivedMessages"] == (
        status["forwardedMessages"]
        + status["droppedMessages"]
        + status["currentQueueSize"]
        + status["spooledMessages"]
    )
    # The journal of unconfirmed writes stopped at its bound (plus at most one read of the publisher).
    assert unconfirmed_peak <= limit + 256 * 1024
    assert proc.metric("kpi_upstream_taken_back_total") > 0
    duplicates = {p: sum(c - 1 for c in got[p].values()) for p in got}
    print(f"sent {sent} of each; medium missing {len(missing_medium)}; drops {drops}; dups {duplicates}")
    await app.close()
    await direct.close()


async def test_nats_py_drain_delivers_what_was_in_flight(sidecar: SidecarProcess) -> None:
    # nats.py's test_subscribe_functools_partial: subscribe, publish, drain: the message is delivered
    # (before the fix, the sidecar dropped the route at UNSUB and the MSG already sent upstream with it).
    for _ in range(5):
        nc = await connect(sidecar.nats_url)
        got: list[bytes] = []

        async def cb(msg: Any, got: list[bytes] = got) -> None:
            got.append(msg.data)

        await nc.subscribe("drain.foo", cb=cb)
        await nc.publish("drain.foo", b"hello")
        await nc.drain()
        assert got == [b"hello"]


async def test_nats_py_drain_while_iterating_gets_every_message(sidecar: SidecarProcess) -> None:
    # nats.py's test_subscribe_iterate: messages published before the drain all reach the iterator.
    nc = await connect(sidecar.nats_url)
    sub = await nc.subscribe("drain.iter.>")
    await settle(nc)
    for i in range(100):
        await nc.publish(f"drain.iter.{i}", b"bar")
    received: list[str] = []

    async def iterate() -> None:
        async for msg in sub.messages:
            received.append(msg.subject)

    task = asyncio.create_task(iterate())
    await nc.drain()
    await asyncio.wait_for(task, 10)
    assert received == [f"drain.iter.{i}" for i in range(100)]


async def test_a_service_draining_mid_load_loses_no_request(
    nats_server: NatsServer, sidecar: SidecarProcess
) -> None:
    # Two members of a queue group behind the sidecar; one drains after 150 of 300 requests, with
    # requests in flight. Every request is answered (before the fix, most runs lost one or more).
    async def serve(name: str) -> nats.NATS:
        nc = await connect(sidecar.nats_url)

        async def handle(msg: Any) -> None:
            await msg.respond(name.encode() + b":" + msg.data)

        await nc.subscribe("svc.work", queue="workers", cb=handle)
        await settle(nc)
        return nc

    client = await connect(nats_server.url)

    async def ask(i: int) -> bytes:
        reply = await client.request("svc.work", str(i).encode(), timeout=5)
        return reply.data.split(b":", 1)[1]

    for _ in range(3):
        first = await serve("a")
        second = await serve("b")
        tasks = []
        drain_task = None
        for i in range(300):
            tasks.append(asyncio.create_task(ask(i)))
            if i == 150:
                drain_task = asyncio.create_task(first.drain())
            await asyncio.sleep(0)  # a steady load: requests are in flight when the drain starts
        assert drain_task is not None
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        await drain_task
        assert answers == [str(i).encode() for i in range(300)]
        await second.close()
    await client.close()


async def test_unsub_with_max_delivers_exactly_that_count_with_echo_off(
    nats_server: NatsServer, sidecar: SidecarProcess
) -> None:
    # echo=false: the client's own messages are skipped by the sidecar; nats-server does not count them
    # against the max, so neither may the sidecar's upstream subscription (before the fix it got 1 of 3).
    app = await nats.connect(sidecar.nats_url, allow_reconnect=False, no_echo=True)
    other = await connect(nats_server.url)
    got: list[bytes] = []

    async def cb(msg: Any) -> None:
        got.append(msg.data)

    sub = await app.subscribe("maxed", cb=cb)
    await sub.unsubscribe(limit=3)
    await settle(app)
    for i in range(2):
        await app.publish("maxed", f"own{i}".encode())
    await settle(app)
    for i in range(6):
        await other.publish("maxed", f"other{i}".encode())
    await other.flush()
    await eventually(lambda: len(got) >= 3)
    await asyncio.sleep(0.3)
    assert got == [b"other0", b"other1", b"other2"]
    # And with echo on, an UNSUB max still delivers exactly the count.
    plain = await connect(sidecar.nats_url)
    sub = await plain.subscribe("maxed.plain")
    await sub.unsubscribe(limit=5)
    await settle(plain)
    for i in range(10):
        await other.publish("maxed.plain", str(i).encode())
    await other.flush()
    msgs = [await sub.next_msg(timeout=3) for _ in range(5)]
    assert [m.data for m in msgs] == [str(i).encode() for i in range(5)]
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.3)
    for nc in (app, other, plain):
        await nc.close()


# ---------------------------------------------------------------------------------------- permissions

PERMISSIONS = """
authorization {
  users = [
    {user: sidecar, password: s3cret, permissions: {
      publish: {deny: ["secret.>"]},
      subscribe: {deny: ["secret.>", "_KPI_ACK.>"]}}},
    {user: admin, password: adm1n}
  ]
}
"""


def permissions_config(upstream: NatsServer, workdir: Path, **overrides: Any) -> dict[str, Any]:
    return sidecar_config(
        upstream.url,
        upstream={
            "servers": [upstream.url],
            "user": "sidecar",
            "password": "s3cret",
            "reconnectWaitMs": 50,
            "maxReconnectWaitMs": 200,
        },
        spool={"path": str(workdir / "spool")},
        **overrides,
    )


def ready(proc: SidecarProcess) -> tuple[int, dict[str, Any]]:
    """Status code and readiness data of GET /api/backpressure/ready."""
    try:
        with urllib.request.urlopen(proc.admin_url + "/api/backpressure/ready", timeout=5) as resp:
            return resp.status, json.loads(resp.read())["data"]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["error"]["details"]


async def test_a_denied_subscription_is_answered_and_never_breaks_the_shared_connection(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    upstream: NatsServer = nats_factory(extra_conf=PERMISSIONS)
    proc: SidecarProcess = sidecar_factory(permissions_config(upstream, workdir))
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    denied = await nats.connect(proc.nats_url, allow_reconnect=False, error_cb=on_error)
    await denied.subscribe("secret.x")
    await settle(denied)
    await eventually(lambda: errors)
    assert errors == ['nats: permissions violation for subscription to "secret.x"']
    assert denied.is_connected  # nats-server keeps the connection open after this -ERR, so does the sidecar
    other = await connect(proc.nats_url)
    sub = await other.subscribe("open.x")
    await settle(other)
    # After an upstream restart the sidecar replays its subscriptions: not the denied one, so the
    # handshake succeeds and the other application receives (before the fix: 0 of 5).
    upstream.stop()
    upstream.start()
    await eventually(lambda: proc.status()["upstreamConnected"], timeout=10)
    await asyncio.sleep(0.3)
    publisher = await nats.connect(upstream.url, user="admin", password="adm1n", allow_reconnect=False)
    for i in range(5):
        await publisher.publish("open.x", str(i).encode())
    await publisher.flush()
    msgs = [await sub.next_msg(timeout=5) for _ in range(5)]
    assert [m.data for m in msgs] == [str(i).encode() for i in range(5)]
    assert "secret.x" not in upstream.subscriptions_of("kpi-sidecar")
    for nc in (denied, other, publisher):
        await nc.close()


async def test_an_upstream_user_without_the_puback_inbox_still_connects(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    # The user may not subscribe to _KPI_ACK.>: without a `delivery: jetstream` rule the sidecar never
    # asks for it (before the fix it never connected while /ready said ready).
    upstream: NatsServer = nats_factory(extra_conf=PERMISSIONS)
    proc: SidecarProcess = sidecar_factory(permissions_config(upstream, workdir))
    await eventually(lambda: proc.status()["upstreamConnected"], timeout=10)
    assert not any(s.startswith("_KPI_ACK") for s in upstream.subscriptions_of("kpi-sidecar"))
    assert ready(proc) == (200, {"ready": True, "upstreamConnected": True})
    # With a jetstream rule it connects too, and says clearly why PubAcks cannot come.
    rules = [{"subject": "js.>", "priority": "critical", "delivery": "jetstream"}]
    with_rule: SidecarProcess = sidecar_factory(permissions_config(upstream, workdir, policies=rules))
    await eventually(lambda: with_rule.status()["upstreamConnected"], timeout=10)
    detailed = with_rule.get("/api/backpressure/health/detailed")["data"]["components"]["upstream"]
    await eventually(
        lambda: with_rule.get("/api/backpressure/health/detailed")["data"]["components"]["upstream"][
            "ackSubscriptionDenied"
        ]
    )
    assert detailed["connected"] is True
    assert "may not subscribe to _KPI_ACK." in with_rule.log()
    # /ready follows the upstream: not ready while it is away.
    upstream.stop()
    await eventually(lambda: not proc.status()["upstreamConnected"], timeout=10)
    assert ready(proc) == (503, {"ready": False, "upstreamConnected": False})


async def test_a_publish_violation_reaches_the_publisher_and_is_counted(
    nats_factory: Any, sidecar_factory: Any, workdir: Path
) -> None:
    upstream: NatsServer = nats_factory(extra_conf=PERMISSIONS)
    proc: SidecarProcess = sidecar_factory(permissions_config(upstream, workdir))
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    app = await nats.connect(proc.nats_url, allow_reconnect=False, error_cb=on_error)
    bystander_errors: list[str] = []

    async def on_bystander_error(err: Exception) -> None:
        bystander_errors.append(str(err))

    bystander = await nats.connect(proc.nats_url, allow_reconnect=False, error_cb=on_bystander_error)
    await bystander.publish("open.y", b"fine")
    await app.publish("secret.y", b"denied")
    await settle(app)
    await eventually(lambda: errors)
    assert errors == ['nats: permissions violation for publish to "secret.y"']
    assert app.is_connected and bystander_errors == []
    sub = await app.subscribe("open.z")
    await settle(app)
    await app.publish("open.z", b"still open")
    assert (await sub.next_msg(timeout=3)).data == b"still open"
    drops = dropped_by_reason(proc)
    assert drops.get("permissions") == 1
    status = proc.status()
    assert status["receivedMessages"] == status["forwardedMessages"] + status["droppedMessages"]
    await app.close()
    await bystander.close()
