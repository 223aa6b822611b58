"""A request the policy refuses is answered at once with a 503 status, not left to time out."""

from __future__ import annotations

import time
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError

from tests.conftest import NatsServer, SidecarProcess, settle, sidecar_config


async def test_request_to_an_open_breaker_fails_fast_with_503(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    proc: SidecarProcess = sidecar_factory(sidecar_config(nats_server.url))
    responder = await nats.connect(nats_server.url)

    async def answer(msg: Any) -> None:
        await msg.respond(b"pong")

    await responder.subscribe("svc.guarded", cb=answer)
    await settle(responder)
    app = await nats.connect(proc.nats_url)
    assert (await app.request("svc.guarded", b"ping", timeout=3)).data == b"pong"
    proc.post("/api/backpressure/circuit-breaker", {"subject": "svc.guarded", "action": "open"})
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await app.request("svc.guarded", b"ping", timeout=5)
    assert time.monotonic() - started < 0.5  # answered by the sidecar, not by the 5 s timeout
    # The raw status message names the reason for whoever looks at the wire.
    inbox = app.new_inbox()
    sub = await app.subscribe(inbox)
    await settle(app)
    await app.publish("svc.guarded", b"ping", reply=inbox)
    status = await sub.next_msg(timeout=2)
    assert status.headers is not None and status.headers.get("KPI-Refused") == "circuit_breaker"
    proc.post("/api/backpressure/circuit-breaker", {"subject": "svc.guarded", "action": "close"})
    assert (await app.request("svc.guarded", b"ping", timeout=3)).data == b"pong"
    await app.close()
    await responder.close()
