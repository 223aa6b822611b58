"""Unmodified nats-py clients through the sidecar, against a real nats-server (issue: sidecar core)."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.errors import NoRespondersError
from nats.js.api import StreamConfig

from tests.conftest import NatsServer, SidecarProcess, eventually, settle, sidecar_config


async def connect(url: str, **kwargs: object) -> nats.NATS:
    return await nats.connect(url, allow_reconnect=False, connect_timeout=3, **kwargs)


async def test_publish_in_order_reaches_direct_subscriber(sidecar: SidecarProcess) -> None:
    direct = await connect(sidecar.upstream.url)
    app = await connect(sidecar.nats_url)
    got: list[bytes] = []

    async def cb(msg: nats.aio.msg.Msg) -> None:
        got.append(msg.data)

    await direct.subscribe("orders.created", cb=cb)
    await settle(direct)
    for i in range(2000):
        await app.publish("orders.created", str(i).encode())
    await settle(app)
    await eventually(lambda: len(got) == 2000)
    assert got == [str(i).encode() for i in range(2000)]
    await app.close()
    await direct.close()


async def test_headers_preserved(sidecar: SidecarProcess) -> None:
    direct = await connect(sidecar.upstream.url)
    app = await connect(sidecar.nats_url)
    sub = await direct.subscribe("h.test")
    await settle(direct)
    await app.publish("h.test", b"body", headers={"X-One": "1", "Trace-Id": "abc def"})
    msg = await sub.next_msg(timeout=3)
    assert msg.data == b"body"
    assert msg.headers == {"X-One": "1", "Trace-Id": "abc def"}
    await app.close()
    await direct.close()


async def test_subscribe_through_sidecar_and_flush_registers_interest(sidecar: SidecarProcess) -> None:
    app = await connect(sidecar.nats_url)
    direct = await connect(sidecar.upstream.url)
    sub = await app.subscribe("events.>")
    # flush() must mean the subscription is live upstream: a direct publish right after must arrive.
    await settle(app)
    await direct.publish("events.a.b", b"hello", headers={"K": "v"})
    msg = await sub.next_msg(timeout=3)
    assert (msg.subject, msg.data, msg.headers) == ("events.a.b", b"hello", {"K": "v"})
    await app.close()
    await direct.close()


async def test_request_reply_both_directions(sidecar: SidecarProcess) -> None:
    app = await connect(sidecar.nats_url)
    direct = await connect(sidecar.upstream.url)

    async def echo(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"re:" + msg.data)

    await direct.subscribe("svc.direct", cb=echo)
    await app.subscribe("svc.app", cb=echo)
    await settle(direct)
    await settle(app)
    resp = await app.request("svc.direct", b"ping", timeout=3)
    assert resp.data == b"re:ping"
    resp = await direct.request("svc.app", b"pong", timeout=3)
    assert resp.data == b"re:pong"
    await app.close()
    await direct.close()


async def test_no_responders_fails_fast(sidecar: SidecarProcess) -> None:
    app = await connect(sidecar.nats_url)
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await app.request("nobody.listens", b"?", timeout=5)
    assert time.monotonic() - started < 1.0
    await app.close()


async def test_queue_group_delivers_each_message_once(sidecar: SidecarProcess) -> None:
    apps = [await connect(sidecar.nats_url) for _ in range(2)]
    direct = await connect(sidecar.upstream.url)
    counts = [0, 0, 0]

    def counter(i: int):
        async def cb(msg: nats.aio.msg.Msg) -> None:
            counts[i] += 1

        return cb

    for i, nc in enumerate([*apps, direct]):
        await nc.subscribe("work.q", queue="workers", cb=counter(i))
        await settle(nc)
    publisher = await connect(sidecar.upstream.url)
    for i in range(600):
        await publisher.publish("work.q", str(i).encode())
    await publisher.flush()
    await eventually(lambda: sum(counts) >= 600)
    await asyncio.sleep(0.2)
    assert sum(counts) == 600
    assert counts[0] + counts[1] > 0  # the sidecar's members take part in the group
    for nc in [*apps, direct, publisher]:
        await nc.close()


async def test_unsubscribe_with_max(sidecar: SidecarProcess) -> None:
    app = await connect(sidecar.nats_url)
    direct = await connect(sidecar.upstream.url)
    got: list[bytes] = []

    async def cb(msg: nats.aio.msg.Msg) -> None:
        got.append(msg.data)

    sub = await app.subscribe("limited", cb=cb)
    await sub.unsubscribe(limit=3)
    await settle(app)
    for i in range(10):
        await direct.publish("limited", str(i).encode())
    await settle(direct)
    await asyncio.sleep(0.5)
    assert got == [b"0", b"1", b"2"]
    await eventually(lambda: "limited" not in sidecar.upstream.subscriptions_of("kpi-sidecar"))
    await app.close()
    await direct.close()


async def test_jetstream_publish_ack_through_sidecar(sidecar: SidecarProcess) -> None:
    app = await connect(sidecar.nats_url)
    js = app.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["js.orders.>"]))
    acks = [await js.publish("js.orders.new", f"o{i}".encode()) for i in range(5)]
    assert [a.seq for a in acks] == [1, 2, 3, 4, 5]
    assert {a.stream for a in acks} == {"ORDERS"}
    # A pull consumer through the sidecar reads them back.
    psub = await js.pull_subscribe("js.orders.>", durable="reader")
    msgs = await psub.fetch(5, timeout=3)
    assert [m.data for m in msgs] == [b"o0", b"o1", b"o2", b"o3", b"o4"]
    for m in msgs:
        await m.ack()
    await app.close()


async def test_no_leaked_upstream_subscriptions(sidecar: SidecarProcess) -> None:
    apps = [await connect(sidecar.nats_url) for _ in range(3)]
    for i, nc in enumerate(apps):
        await nc.subscribe(f"leak.{i}.a")
        await nc.subscribe(f"leak.{i}.b", queue="g")
        await settle(nc)
    subs = sidecar.upstream.subscriptions_of("kpi-sidecar")
    assert sum(s.startswith("leak.") for s in subs) == 6
    await apps[0].close()
    # An abrupt disconnect (no UNSUB sent) must clean up too.
    apps[1]._transport.close()
    await eventually(
        lambda: (
            sorted(s for s in sidecar.upstream.subscriptions_of("kpi-sidecar") if s.startswith("leak."))
            == ["leak.2.a", "leak.2.b"]
        )
    )
    await apps[2].close()
    await eventually(
        lambda: not [s for s in sidecar.upstream.subscriptions_of("kpi-sidecar") if s.startswith("leak.")]
    )


async def test_publishes_wait_while_upstream_is_down(nats_factory: object, sidecar_factory: object) -> None:
    upstream: NatsServer = nats_factory(jetstream=True)  # type: ignore[operator]
    setup = await connect(upstream.url)
    await setup.jetstream().add_stream(StreamConfig(name="BUF", subjects=["buffered.>"]))
    await setup.close()
    proc: SidecarProcess = sidecar_factory(sidecar_config(upstream.url))  # type: ignore[operator]
    upstream.stop()
    app = await connect(proc.nats_url)  # the NATS port keeps accepting while the upstream is down
    for i in range(100):
        await app.publish("buffered.x", str(i).encode())
    await app.flush()
    upstream.start()
    direct = await connect(upstream.url)
    js = direct.jetstream()

    async def stored() -> int:
        return (await js.stream_info("BUF")).state.messages

    deadline = time.monotonic() + 10
    while await stored() < 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await stored() == 100
    bodies = [(await js.get_msg("BUF", seq)).data for seq in range(1, 101)]
    assert bodies == [str(i).encode() for i in range(100)]
    await app.close()
    await direct.close()


async def test_no_echo_is_per_application(sidecar: SidecarProcess) -> None:
    quiet = await nats.connect(sidecar.nats_url, no_echo=True, allow_reconnect=False)
    chatty = await nats.connect(sidecar.nats_url, allow_reconnect=False)  # same upstream connection
    direct = await connect(sidecar.upstream.url)
    got_quiet: list[bytes] = []
    got_chatty: list[bytes] = []

    async def on_quiet(msg: nats.aio.msg.Msg) -> None:
        got_quiet.append(msg.data)

    async def on_chatty(msg: nats.aio.msg.Msg) -> None:
        got_chatty.append(msg.data)

    await quiet.subscribe("echo.test", cb=on_quiet)
    await chatty.subscribe("echo.test", cb=on_chatty)
    await settle(quiet)
    await settle(chatty)
    for i in range(5):
        await quiet.publish("echo.test", f"quiet{i}".encode())
        await chatty.publish("echo.test", f"chatty{i}".encode())
        await direct.publish("echo.test", f"direct{i}".encode())
    for nc in (quiet, chatty, direct):
        await nc.flush()
    await eventually(lambda: len(got_chatty) == 15 and len(got_quiet) == 10)
    await asyncio.sleep(0.2)
    # The no-echo application gets everyone's messages but its own; the other one gets all 15.
    assert sorted(got_quiet) == sorted(
        [f"chatty{i}".encode() for i in range(5)] + [f"direct{i}".encode() for i in range(5)]
    )
    assert len(got_chatty) == 15
    for nc in (quiet, chatty, direct):
        await nc.close()
