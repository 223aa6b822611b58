"""A broken upstream: bytes that are not NATS, or a fatal -ERR, on the sidecar's upstream connection.

The sidecar must drop that connection at once (not wait for stale detection: PINGs are 10 minutes apart
here), reconnect, replay the subscriptions, and keep the application's own connection open throughout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import pytest

from tests.conftest import NatsServer, SidecarProcess, eventually, settle, sidecar_config
from tests.faults.relay import InjectingRelay


def reconnects(proc: SidecarProcess) -> int:
    components = proc.get("/api/backpressure/health/detailed")["data"]["components"]
    return int(components["upstream"]["reconnects"])


@pytest.mark.parametrize(
    "garbage",
    [b"THIS IS NOT NATS\r\n", b"MSG a\r\n", b"-ERR 'Unknown Protocol Operation'\r\n"],
    ids=["unknown-op", "bad-msg-args", "fatal-err"],
)
async def test_garbage_from_the_upstream_reconnects_at_once_and_the_application_stays(
    nats_server: NatsServer, sidecar_factory: Any, garbage: bytes
) -> None:
    relay = InjectingRelay(nats_server.port)
    config = sidecar_config(relay.url)
    config["upstream"] = {**config["upstream"], "pingIntervalMs": 600_000, "reconnectWaitMs": 50}
    proc: SidecarProcess = sidecar_factory(config)
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    hub = await nats.connect(nats_server.url)
    try:
        got: list[bytes] = []

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        await app.subscribe("garbage.in", cb=on_msg)
        await settle(app)
        assert relay.connections == 1 and reconnects(proc) == 0

        relay.inject(garbage)
        # Within 2 s, far sooner than stale detection: the sidecar dropped that connection and made another.
        await eventually(lambda: relay.connections == 2, timeout=2)
        await eventually(lambda: proc.status()["upstreamConnected"], timeout=5)
        assert reconnects(proc) == 1

        # The subscription was replayed on the new connection; the application never noticed.
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            await hub.publish("garbage.in", b"after")
            await hub.flush()
            await asyncio.sleep(0.1)
        assert got and got[-1] == b"after"
        assert app.is_connected

        # And its publishes still reach the hub.
        sub = await hub.subscribe("garbage.out")
        await hub.flush()
        await app.publish("garbage.out", b"out")
        await app.flush()
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"out"
    finally:
        await app.close()
        await hub.close()
        relay.close()
