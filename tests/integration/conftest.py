"""Fixtures the integration tests share."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import NatsServer, SidecarProcess, sidecar_config


@pytest.fixture
def seed_sidecar(nats_server: NatsServer, sidecar_factory: Any) -> SidecarProcess:
    """A sidecar with the seed's default backpressure configuration (maxPublishRate 1000, maxQueueSize
    10000, ...: a flood can hold it at a level, tests.flood.flood_at), in front of the test nats-server."""
    config = sidecar_config(nats_server.url)
    config["backpressure"] = {}
    proc: SidecarProcess = sidecar_factory(config)
    proc.upstream = nats_server  # type: ignore[attr-defined]
    return proc
