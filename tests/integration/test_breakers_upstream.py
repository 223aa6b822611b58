"""Circuit breakers opened by real upstream failures: nats-server permission violations."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import nats

from tests.conftest import NatsServer, SidecarProcess, settle, sidecar_config
from tests.integration.test_bulk_decisions import finish, raw_client

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
    opened = [("forbidden.x", "open", "failures")]
    await until(lambda: breakers(proc) == opened, 5, "the breaker opens")
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


def breakers(proc: SidecarProcess) -> list[tuple[str, str, str]]:
    data = proc.get("/api/backpressure/circuit-breaker/status")["data"]["breakers"]
    return [(b["subject"], b["state"], b["reason"]) for b in data]


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_half_open_breaker_closes_on_trials_written_in_runs(
    nats_factory: Any, sidecar_factory: Any
) -> None:
    # Runs to a half-open breaker's subject are decided in bulk (a trial share); the kept trials are
    # confirmed by the PONG after them, so the breaker closes once the upstream accepts the subject again.
    upstream: NatsServer = nats_factory(extra_conf=PERMISSIONS)
    config = sidecar_config(
        upstream.url,
        backpressure={
            "breakerFailureThreshold": 3,
            "recoveryDelayMs": 300,
            "breakerHalfOpenFraction": 0.5,
            "breakerHalfOpenSuccesses": 2,
        },
    )
    config["upstream"].update({"user": "side", "password": "car"})
    proc: SidecarProcess = sidecar_factory(config)
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    for i in range(3):
        await app.publish("forbidden.x", str(i).encode())
        await settle(app)
    await until(lambda: breakers(proc) == [("forbidden.x", "open", "failures")], 5, "the breaker opens")
    watcher = await nats.connect(upstream.url, user="watcher", password="w", allow_reconnect=False)
    got: list[bytes] = []

    async def on(msg: Any) -> None:
        got.append(msg.data)

    await watcher.subscribe("forbidden.x", cb=on)
    await settle(watcher)
    # The upstream allows the subject from now on (nats-server reloads its permissions on SIGHUP; a
    # connection attempt during the reload may be refused, so the watcher connected first).
    upstream.conf.write_text(upstream.conf.read_text().replace('deny: ["forbidden.>"]', 'allow: [">"]'))
    assert upstream.proc is not None
    upstream.proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)  # the recovery delay is over, the reload done
    dropped_before = proc.status()["droppedMessages"]
    sock = raw_client(proc.ports["nats"])
    sent = 0
    deadline = time.monotonic() + 10
    while breakers(proc) and time.monotonic() < deadline:
        sock.sendall(b"PUB forbidden.x 4\r\nrun!\r\n" * 200)  # one read: a run
        sent += 200
        await asyncio.sleep(0.1)
    assert breakers(proc) == []
    finish(sock)
    await asyncio.sleep(0.3)
    await settle(watcher)
    dropped = proc.status()["droppedMessages"] - dropped_before
    # About half of each run went as trials while half-open, all of it once closed; none lost uncounted.
    assert 0 < dropped < sent
    assert len(got) + dropped == sent
    await app.close()
    await watcher.close()
