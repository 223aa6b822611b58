"""A sidecar without its C scanner (installed where no compiler was, or KPI_SIDECAR_NO_EXTENSIONS=1)
behaves the same: the data path both ways, in order, and it says in its log which parser it runs."""

from __future__ import annotations

import os
from typing import Any

import nats
import pytest

from tests.conftest import NatsServer, SidecarProcess, eventually, settle, sidecar_config


@pytest.mark.parametrize(
    ("env", "parser"), [({"KPI_SIDECAR_NO_EXTENSIONS": "1"}, "pure Python"), ({}, "C scanner")]
)
async def test_publish_subscribe_request_in_order_with_either_parser(
    nats_server: NatsServer, sidecar_factory: Any, env: dict[str, str], parser: str
) -> None:
    proc: SidecarProcess = sidecar_factory(sidecar_config(nats_server.url), env=env)
    if os.environ.get("KPI_SIDECAR_NO_EXTENSIONS"):
        parser = "pure Python"  # the whole test run is without it
    assert f"(parser: {parser})" in proc.log()
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    hub = await nats.connect(nats_server.url, allow_reconnect=False)
    up: list[bytes] = []
    down: list[bytes] = []

    async def on_up(msg: Any) -> None:
        up.append(msg.data)

    async def on_down(msg: Any) -> None:
        down.append(msg.data)

    async def echo(msg: Any) -> None:
        await msg.respond(b"re:" + msg.data)

    await hub.subscribe("fb.up", cb=on_up)
    await hub.subscribe("fb.svc", cb=echo)
    await app.subscribe("fb.down", cb=on_down)
    await settle(hub)
    await settle(app)
    n = 5000
    for i in range(n):
        await app.publish("fb.up", b"%d" % i)
        await hub.publish("fb.down", b"%d" % i)
    await app.flush()
    await hub.flush()
    reply = await app.request("fb.svc", b"q", timeout=3)
    await eventually(lambda: len(up) >= n and len(down) >= n, timeout=10)
    assert up == [b"%d" % i for i in range(n)]
    assert down == [b"%d" % i for i in range(n)]
    assert reply.data == b"re:q"
    await app.close()
    await hub.close()
