"""A PONG confirms only the critical messages written before its PING (in-process sidecar, real server)."""

from __future__ import annotations

from pathlib import Path

from policies.engine import Verdict
from proxy.config.schema import build_config
from proxy.sidecar import Sidecar
from tests.conftest import NatsServer, eventually, sidecar_config


async def test_a_message_written_after_a_ping_waits_for_the_next_pong(
    nats_server: NatsServer, workdir: Path
) -> None:
    config = build_config(
        sidecar_config(
            nats_server.url,
            policies=[{"subject": "conf.>", "priority": "critical"}],
            spool={"path": None},
            upstream={"servers": [nats_server.url], "pingIntervalMs": 60000},
        )
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    upstream = sidecar.upstream
    try:
        nats_server.pause()  # no PONG can come back until resume()
        first = sidecar.publisher.publish_message("conf.a", None, b"A", None, sidecar.clock())
        assert first.verdict is Verdict.FORWARD
        await eventually(lambda: upstream.pings_written == 1)
        second = sidecar.publisher.publish_message("conf.a", None, b"B", None, sidecar.clock())
        assert second.verdict is Verdict.FORWARD
        # B went out after the first PING: it needs a PING of its own, and stays unconfirmed until then.
        await eventually(lambda: upstream.pings_written == 2)
        assert sorted(len(batch) for batch in sidecar.confirmations.inflight.values()) == [1, 1]
        nats_server.resume()
        await eventually(lambda: not sidecar.confirmations.inflight)
    finally:
        nats_server.resume()
        await sidecar.shutdown()


async def test_bounds_of_remembered_failures_and_pending_echoes(workdir: Path) -> None:
    from proxy.nats.protocol import encode_pub
    from proxy.pipeline.deliveries import MAX_PENDING_ECHOES
    from proxy.pipeline.message import OutMsg
    from proxy.pipeline.refusals import MAX_FAILURE_RECORDS
    from proxy.ports.nats_port import ClientConnection, ClientSub

    config = build_config(sidecar_config("nats://127.0.0.1:1", spool={"path": None}))
    sidecar = Sidecar(config)  # not started: nothing here needs the network
    for i in range(MAX_FAILURE_RECORDS + 50):
        sidecar.on_upstream_error(f'Permissions Violation for Publish to "deny.{i}"')
    assert len(sidecar.refusals.last_failure) == MAX_FAILURE_RECORDS
    assert "deny.0" not in sidecar.refusals.last_failure  # the oldest made room
    client = ClientConnection(sidecar.listener, 1)
    client.echo = False
    sub = ClientSub(client, "1", "echo.>", None, 1)
    client.subs["1"] = sub
    for i in range(MAX_PENDING_ECHOES + 10):
        frame = encode_pub("echo.x", None, str(i).encode())
        sidecar.deliveries.expect_echo(client, OutMsg("echo.x", None, 2, 1, frame, client, 0.0, None))
    assert sub.echoes is not None and len(sub.echoes) == MAX_PENDING_ECHOES
    assert sub.echoes[0][0][2] == b"10"  # the oldest expectations went first
