"""Held clients at their bound: a client whose ops wait for room is retried in order, and held once."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.config.schema import build_config
from proxy.pipeline.flow import FlowControl
from tests.conftest import sidecar_config


class Held:
    """A connection whose held ops fit only once `room` is set."""

    def __init__(self, flow: FlowControl) -> None:
        self.flow = flow
        self.closed = False
        self.room = False
        self.retries = 0

    def resume(self) -> bool:
        self.retries += 1
        if not self.room:
            self.flow.hold(self)  # type: ignore[arg-type]  # what process() does when it holds again
        return self.room


def test_a_client_retried_again_and_again_is_held_once() -> None:
    # Each retry of a client still waiting (the PubAck window full, the queue full) holds it again: before,
    # each appended it once more to the held deque, which grew by one per pump while the client waited.
    loop: Any = asyncio.new_event_loop()
    try:
        flow = FlowControl(build_config(sidecar_config("nats://127.0.0.1:1")), loop, None)  # type: ignore[arg-type]
        first, second = Held(flow), Held(flow)
        flow.hold(first)  # type: ignore[arg-type]
        flow.hold(second)  # type: ignore[arg-type]
        for _ in range(1000):
            flow.resume_held()
        assert flow.held_clients == 2
        assert (first.retries, second.retries) == (1000, 0)  # in order: the first still waits
        first.room = second.room = True
        flow.resume_held()
        assert flow.held_clients == 0
        assert (first.retries, second.retries) == (1001, 1)
    finally:
        loop.close()
