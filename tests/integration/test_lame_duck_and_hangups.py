"""The upstream's lame-duck INFO moves the sidecar to another server; an admin client hanging up mid-body
is one quiet log line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

import nats

from tests.conftest import NatsServer, SidecarProcess, eventually, settle, sidecar_config


async def test_lame_duck_info_moves_the_sidecar_to_the_next_server(
    nats_factory: Any, sidecar_factory: Any
) -> None:
    # nats-server sends INFO {"ldm": true} at once on SIGUSR2, then closes its clients over the lame-duck
    # duration (after a 10 s grace here). The sidecar moves to the next configured server at once
    # (before the fix it stayed until the leaving server closed it).
    leaving: NatsServer = nats_factory(extra_conf='lame_duck_duration: "30s"\nlame_duck_grace_period: "10s"')
    other: NatsServer = nats_factory()
    config = sidecar_config(
        leaving.url, upstream={"servers": [leaving.url, other.url], "reconnectWaitMs": 50}
    )
    proc: SidecarProcess = sidecar_factory(config)
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    sub = await app.subscribe("ldm.x")
    await settle(app)
    assert leaving.proc is not None
    os.kill(leaving.proc.pid, signal.SIGUSR2)
    started = time.monotonic()
    await eventually(lambda: "kpi-sidecar" in {c.get("name") for c in other.connz()["connections"]}, 5)
    moved_after = time.monotonic() - started
    assert moved_after < 5
    # The subscription came along: a message published on the new server reaches the application.
    publisher = await nats.connect(other.url, allow_reconnect=False)
    await asyncio.sleep(0.2)
    await publisher.publish("ldm.x", b"after the move")
    await publisher.flush()
    assert (await sub.next_msg(timeout=5)).data == b"after the move"
    assert "lame-duck mode" in proc.log()
    await publisher.close()
    await app.close()


def test_admin_client_hanging_up_mid_body_is_not_an_error(sidecar: SidecarProcess) -> None:
    for path in ("/api/backpressure/config", "/api/backpressure/load-test"):
        with socket.create_connection(("127.0.0.1", sidecar.ports["admin"]), timeout=3) as sock:
            sock.sendall(
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: 5000\r\n\r\n".encode()
                + b'{"maxQueueSize": 1'
            )
            time.sleep(0.2)
    time.sleep(0.5)
    log = sidecar.log()
    assert sidecar.status()["upstreamConnected"] is True  # still serving
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
