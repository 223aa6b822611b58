"""Local client auth, upstream credentials and TLS, slow consumers and connection limits."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest

from tests.conftest import NatsServer, SidecarProcess, settle, sidecar_config
from tests.integration.test_wire_conformance import exchange


async def roundtrip(app_url: str, direct_url: str, subject: str, **direct_kwargs: Any) -> bytes:
    direct = await nats.connect(direct_url, allow_reconnect=False, **direct_kwargs)
    sub = await direct.subscribe(subject)
    await settle(direct)
    app = await nats.connect(app_url, allow_reconnect=False)
    await app.publish(subject, b"hello")
    await settle(app)
    data = (await sub.next_msg(timeout=3)).data
    await app.close()
    await direct.close()
    return data


def test_local_token_auth_answers_like_nats_server(nats_factory: Any, sidecar_factory: Any) -> None:
    reference: NatsServer = nats_factory(extra_conf="authorization { token: s3cret }")
    upstream: NatsServer = nats_factory()
    proc: SidecarProcess = sidecar_factory(sidecar_config(upstream.url, clients={"token": "s3cret"}))
    for script in (
        b'CONNECT {"verbose":false}\r\nPING\r\n',
        b'CONNECT {"verbose":false,"auth_token":"wrong"}\r\nPING\r\n',
        b"PUB a 1\r\nx\r\n",
        b'CONNECT {"verbose":false,"auth_token":"s3cret"}\r\nPING\r\n',
    ):
        assert exchange(proc.ports["nats"], script) == exchange(reference.port, script), script


async def test_local_token_auth_with_nats_py(nats_server: NatsServer, sidecar_factory: Any) -> None:
    proc: SidecarProcess = sidecar_factory(sidecar_config(nats_server.url, clients={"token": "s3cret"}))
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(proc.nats_url, allow_reconnect=False, connect_timeout=2)
    nc = await nats.connect(proc.nats_url, token="s3cret", allow_reconnect=False)
    await nc.flush()
    await nc.close()


async def test_upstream_user_password(nats_factory: Any, sidecar_factory: Any) -> None:
    upstream: NatsServer = nats_factory(extra_conf="authorization { user: side, password: car }")
    config = sidecar_config(upstream.url)
    config["upstream"].update({"user": "side", "password": "car"})
    proc: SidecarProcess = sidecar_factory(config)
    # The application needs no credentials: the sidecar holds them.
    assert await roundtrip(proc.nats_url, upstream.url, "auth.user", user="side", password="car") == b"hello"


async def test_upstream_token_from_environment(nats_factory: Any, sidecar_factory: Any) -> None:
    upstream: NatsServer = nats_factory(extra_conf="authorization { token: from-env }")
    proc: SidecarProcess = sidecar_factory(
        sidecar_config(upstream.url), env={"KPI_SIDECAR_UPSTREAM_TOKEN": "from-env"}
    )
    assert await roundtrip(proc.nats_url, upstream.url, "auth.env", token="from-env") == b"hello"


async def test_wrong_upstream_credentials_are_reported_not_fatal(
    nats_factory: Any, sidecar_factory: Any
) -> None:
    upstream: NatsServer = nats_factory(extra_conf="authorization { token: right }")
    proc: SidecarProcess = sidecar_factory(
        sidecar_config(upstream.url), env={"KPI_SIDECAR_UPSTREAM_TOKEN": "wrong"}
    )
    # The NATS port still accepts applications; the log names the cause once.
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    await app.publish("x.y", b"queued")
    await app.flush()
    await app.close()
    assert "Authorization Violation" in proc.log()


def make_cert(workdir: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is required for the TLS test"
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_upstream_tls(nats_factory: Any, sidecar_factory: Any, workdir: Path) -> None:
    import ssl

    cert, key = make_cert(workdir)
    upstream: NatsServer = nats_factory(extra_conf=f'tls {{ cert_file: "{cert}", key_file: "{key}" }}')
    config = sidecar_config(f"tls://127.0.0.1:{upstream.port}")
    config["upstream"]["tls"] = {"caFile": str(cert)}
    proc: SidecarProcess = sidecar_factory(config)
    ctx = ssl.create_default_context(cafile=str(cert))
    direct_url = f"tls://127.0.0.1:{upstream.port}"
    assert await roundtrip(proc.nats_url, direct_url, "tls.works", tls=ctx) == b"hello"


def test_slow_consumer_is_disconnected_and_memory_stays_bounded(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    proc: SidecarProcess = sidecar_factory(
        sidecar_config(nats_server.url, clients={"maxPendingBytes": 1_048_576})
    )
    assert proc.proc is not None
    slow = socket.create_connection(("127.0.0.1", proc.ports["nats"]))
    slow.recv(4096)
    slow.sendall(b'CONNECT {"verbose":false}\r\nSUB big 1\r\nPING\r\n')
    time.sleep(0.3)
    rss_before = psutil.Process(proc.proc.pid).memory_info().rss
    # 40 MB towards a client that never reads.
    pub = socket.create_connection(("127.0.0.1", nats_server.port))
    pub.recv(4096)
    frame = b"PUB big 10000\r\n" + b"z" * 10000 + b"\r\n"
    pub.sendall(b'CONNECT {"verbose":false}\r\n' + frame * 4000 + b"PING\r\n")
    pub.settimeout(10)
    assert b"PONG" in pub.recv(4096)
    time.sleep(1.0)
    rss_after = psutil.Process(proc.proc.pid).memory_info().rss
    assert (rss_after - rss_before) / 1_048_576 < 20
    # The slow client was cut off: reading drains what the kernel held, then EOF or a reset.
    slow.settimeout(5)
    total = 0
    try:
        while chunk := slow.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    assert total < 40_000_000
    assert "slow consumer" in proc.log()
    # And the sidecar still serves others.
    asyncio.run(_still_serves(proc, nats_server))


async def _still_serves(proc: SidecarProcess, upstream: NatsServer) -> None:
    assert await roundtrip(proc.nats_url, upstream.url, "after.slow") == b"hello"


def test_max_connections(nats_server: NatsServer, sidecar_factory: Any) -> None:
    proc: SidecarProcess = sidecar_factory(sidecar_config(nats_server.url, clients={"maxConnections": 2}))
    keep = [socket.create_connection(("127.0.0.1", proc.ports["nats"])) for _ in range(2)]
    for sock in keep:
        assert sock.recv(4096).startswith(b"INFO ")
    with socket.create_connection(("127.0.0.1", proc.ports["nats"]), timeout=3) as third:
        data = b""
        while chunk := third.recv(4096):
            data += chunk
    assert data == b"-ERR 'maximum connections exceeded'\r\n"
    for sock in keep:
        sock.close()


async def test_messages_above_the_upstreams_max_payload_never_reach_it(
    nats_factory: Any, sidecar_factory: Any
) -> None:
    upstream: NatsServer = nats_factory(extra_conf="max_payload: 1024")
    upstream.stop()  # the sidecar starts before it knows the upstream's limit (1 MiB by default)
    proc: SidecarProcess = sidecar_factory(sidecar_config(upstream.url))
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    await app.publish("mp.small", b"a")
    await app.publish("mp.big", b"x" * 4096)  # accepted under 1 MiB, too big for the upstream
    await app.publish("mp.small", b"b")
    await app.flush()
    upstream.start()
    direct = await nats.connect(upstream.url)
    sub = await direct.subscribe("mp.>")
    await settle(direct)
    await app.publish("mp.small", b"c")
    await app.flush()
    seen: list[bytes] = []
    while not seen or seen[-1] != b"c":
        seen.append((await sub.next_msg(timeout=5)).data)
    assert set(seen) <= {
        b"a",
        b"b",
        b"c",
    }  # the small ones queued meanwhile may arrive too; never the big one
    status = proc.status()
    # The oversize message was dropped, not written: the shared upstream connection was never closed.
    assert status["upstreamConnected"] is True
    upstream_health = proc.get("/api/backpressure/health/detailed")["data"]["components"]["upstream"]
    assert upstream_health["reconnects"] == 0, upstream_health
    assert "max_payload" in proc.log()
    await app.close()
    await direct.close()


async def test_fails_over_to_the_next_server_and_replays_subscriptions(
    nats_factory: Any, sidecar_factory: Any
) -> None:
    first: NatsServer = nats_factory()
    second: NatsServer = nats_factory()
    config = sidecar_config(first.url)
    config["upstream"].update({"servers": [first.url, second.url], "pingIntervalMs": 500})
    proc: SidecarProcess = sidecar_factory(config)
    app = await nats.connect(proc.nats_url, allow_reconnect=False)
    sub = await app.subscribe("failover.in")
    await settle(app)
    first.kill()
    # The application's connection to the sidecar survives; its subscription moves to the second server.
    direct = await nats.connect(second.url)
    got = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not got:
        await direct.publish("failover.in", b"via second")
        await direct.flush()
        try:
            got = (await sub.next_msg(timeout=0.3)).data
        except nats.errors.TimeoutError:
            continue
    assert got == b"via second"
    out = await direct.subscribe("failover.out")
    await settle(direct)
    await app.publish("failover.out", b"from app")
    await app.flush()
    assert (await out.next_msg(timeout=3)).data == b"from app"
    assert app.is_connected
    await app.close()
    await direct.close()
