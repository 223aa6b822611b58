"""Flow control: which application connections are not read, and why.

One job: push back on applications with TCP instead of queueing in the sidecar. Two holds: clients
whose ops the engine could not take (`hold` / `resume_held`, retried by the pump) and clients paused
while the upstream socket is backed up (`pause`, ended by `end` when it drains or by `stall` after
`upstream.flowControlMs`). Collaborators: the `Upstream` (is it backed up, is it frozen), the client
connections (`sync_reading`, `resume`); the sidecar wires `end` to the upstream's writable and lost events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from proxy.config.schema import SidecarConfig
from proxy.upstream.connection import Upstream

if TYPE_CHECKING:
    from proxy.ports.nats_port import ClientConnection

log = logging.getLogger(__name__)


class FlowControl:
    """Paused and held clients, and whether the upstream counts as stalled."""

    def __init__(self, config: SidecarConfig, loop: asyncio.AbstractEventLoop, upstream: Upstream) -> None:
        self.config = config
        self.loop = loop
        self.upstream = upstream
        # Clients with held ops, in the order they were held, each once (a dict as an ordered set: a
        # client held again while it is retried keeps its place).
        self._held_clients: dict[ClientConnection, None] = {}
        # Clients not read while the upstream socket is backed up (flow control, see pause).
        self.paused: set[ClientConnection] = set()
        self.pauses = 0
        self.upstream_stalled = False  # backed up for longer than upstream.flowControlMs
        self._timer: asyncio.TimerHandle | None = None

    def hold(self, client: ClientConnection) -> None:
        """The engine had no room for this client's ops: retry them after the next pump."""
        self._held_clients.setdefault(client)

    @property
    def held_clients(self) -> int:
        """Clients with ops waiting for room."""
        return len(self._held_clients)

    def resume_held(self) -> None:
        """Retry held clients in order; stop at the first that is still held."""
        held = self._held_clients
        while held:
            client = next(iter(held))
            if client.closed or client.resume():
                del held[client]
            else:
                break

    def pause(self, client: ClientConnection) -> None:
        """The upstream socket is backed up (more than `upstream.maxPendingBytes` unsent): stop reading
        this client until it drains, so that TCP pushes back on the application instead of the sidecar
        queueing what it reads message by message. Nothing is dropped. A hub that is only briefly slower
        than the application costs nothing more; one that stays backed up for `upstream.flowControlMs`
        is a stalled upstream: the applications are read again and the engine queues (and, as the queue
        fills, sheds by level) as it does while the upstream is away."""
        if self.upstream_stalled or client in self.paused or client.closed:
            return
        budget = self.config.upstream.flow_control_ms / 1000
        if budget <= 0:
            self.upstream_stalled = True
            return
        self.paused.add(client)
        self.pauses += 1
        client.sync_reading()
        if self._timer is None:
            self._timer = self.loop.call_later(budget, self._stall)

    def forget(self, client: ClientConnection) -> None:
        """A closed client is no longer paused."""
        self.paused.discard(client)

    def _stall(self) -> None:
        self._timer = None
        if not self.upstream.paused:
            self.end()
            return
        if self.upstream.check_stale(suspect=True):
            return  # a frozen server, not a slow one: reconnecting (the loss ends flow control)
        self.upstream_stalled = True
        log.info(
            "upstream socket backed up for %d ms: applications are read again, the engine queues",
            self.config.upstream.flow_control_ms,
        )
        self._release()

    def _release(self) -> None:
        clients, self.paused = self.paused, set()
        for client in clients:
            client.sync_reading()

    def end(self) -> None:
        """The upstream socket drained (or the connection is gone): back to reading everyone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.upstream_stalled = False
        self._release()
