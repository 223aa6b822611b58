"""Circuit breakers opened by real upstream failures: nats-server permission violations."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats

from tests.conftest import NatsServer, SidecarProcess, settle, sidecar_config

PERMISSIONS = """
authorization {
  users: [
    {user: side, password: car, permissions: {publish: {deny: ["forbidden.>"]}}}
    {user: watcher, password: w}
  ]
}
"""


async def test_permission_violations_open_the_subjects_breaker(
    nats_factory: Any, sidecar_factory: Any
) -> None:
    upstream: NatsServer = nats_factory(extra_conf=PERMISSIONS)
    config = sidecar_config(
        upstream.url, backpressure={"breakerFailureThreshold": 3, "recoveryDelayMs": 60000}
    )
    config["upstream"].update({"user": "side", "password": "car"})
    proc: SidecarProcess = sidecar_factory(config)
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    watcher = await nats.connect(upstream.url, user="watcher", password="w", allow_reconnect=False)
    allowed: list[bytes] = []

    async def on_allowed(msg: Any) -> None:
        allowed.append(msg.data)

    await watcher.subscribe("allowed.x", cb=on_allowed)
    await settle(watcher)
    for i in range(3):
        await app.publish("forbidden.x", str(i).encode())
        await settle(app)
    # The upstream answers each with -ERR 'Permissions Violation ...'; three open the breaker.
    deadline = time.monotonic() + 5
    breakers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        breakers = proc.get("/api/backpressure/circuit-breaker/status")["data"]["breakers"]
        if any(b["subject"] == "forbidden.x" and b["state"] == "open" for b in breakers):
            break
        await asyncio.sleep(0.1)
    assert [(b["subject"], b["state"], b["reason"]) for b in breakers] == [
        ("forbidden.x", "open", "failures")
    ]
    dropped_before = proc.status()["droppedMessages"]
    for i in range(10):
        await app.publish("forbidden.x", b"shed")
        await app.publish("allowed.x", str(i).encode())
    await app.flush()
    await asyncio.sleep(0.3)
    # The open breaker sheds that subject only; the application's connection is untouched.
    assert proc.status()["droppedMessages"] - dropped_before == 10
    assert allowed == [str(i).encode() for i in range(10)]
    assert app.is_connected
    await app.close()
    await watcher.close()
