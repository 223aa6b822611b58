"""The pump at the write journal's bound: a queue released after the upstream took no writes."""

from __future__ import annotations

from pathlib import Path

from policies.engine import Verdict
from proxy.config.schema import build_config
from proxy.sidecar import Sidecar
from tests.conftest import NatsServer, sidecar_config

LIMIT = 65_536
PAYLOAD = b"x" * 1000


async def test_a_released_queue_stops_at_the_journal_bound(nats_server: NatsServer, workdir: Path) -> None:
    # 3,000 medium messages of 1 KB queue while the upstream takes no writes (it is moving: lame duck),
    # and the server answers no PONG: released, they may fill the journal of unconfirmed writes up to its
    # bound and one slice's last frame, not by a whole slice (1,024 frames, about 1 MB, before the fix).
    config = build_config(
        sidecar_config(
            nats_server.url,
            spool={"path": None},
            upstream={"servers": [nats_server.url], "pingIntervalMs": 60000, "maxUnconfirmedBytes": LIMIT},
            backpressure={"maxPublishRate": 1_000_000, "maxQueueSize": 10_000},
        )
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    upstream = sidecar.upstream
    try:
        nats_server.pause()
        upstream.moving = True
        for _ in range(3000):
            decision = sidecar.publisher.publish_message("pump.a", None, PAYLOAD, None, sidecar.clock())
            assert decision.verdict is Verdict.QUEUE
        upstream.moving = False
        sidecar.publisher.pump()
        assert 0 < upstream.journal.nbytes <= LIMIT + len(PAYLOAD) + 64
        assert sidecar.engine.queue_size > 0  # the rest waits for the PONG that confirms the first
    finally:
        nats_server.resume()
        await sidecar.shutdown()
