"""What an application connection may ask of the sidecar: the `ClientHost` interface.

One job: be the narrow waist between `proxy.ports.nats_port` (one connection, the server side of the
client protocol) and the rest of the sidecar, so that connections never import the sidecar (asyncpg's
`Protocol` knows its settings, not the pool). `proxy.ports.listener.NatsListener` implements it by
wiring each member to the collaborator that owns it (auth and registry itself; publish to the
`Publisher`, subscriptions to `Deliveries`, pauses to `FlowControl`). Annotations name the
connection types only for type checkers; nothing here is imported at run time by anything it names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any, Final, Protocol

from proxy.config.schema import SidecarConfig
from proxy.nats.protocol import Pub, PubRun, Sub
from proxy.ports.outbound import OutboundBudget

if TYPE_CHECKING:
    from proxy.ports.nats_port import ClientConnection, ClientSub

# What `publish_run` did with a run of publishes.
RUN_SPLIT: Final = 0  # not taken: the connection offers its messages one by one
RUN_TAKEN: Final = 1  # decided and written
RUN_HOLD: Final = 2  # not now: the connection keeps it and is not read until the sidecar has room
# (or a PubRun: the part of the run not taken, which the connection keeps in the same way; or a
# SplitFrom: the run's first messages taken, the rest to offer one by one)


class SplitFrom:
    """What `publish_run` returns when it took a run's first messages and the connection is to offer
    the rest, `frames`, one by one (RUN_SPLIT for that part)."""

    __slots__ = ("frames",)

    def __init__(self, frames: bytes) -> None:
        self.frames = frames


class UpstreamLink(Protocol):
    """The upstream as a connection sees it: is it there, is it backed up, and its PING barrier."""

    @property
    def connected(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    def confirm(self, callback: Callable[[bool], None]) -> None: ...


class ClientHost(Protocol):
    """Everything a `ClientConnection` calls: auth, INFO, the registry, publish, subscribe, flow."""

    loop: asyncio.AbstractEventLoop
    clock: Callable[[], float]
    outbound: OutboundBudget
    slow_consumers: int

    @property
    def config(self) -> SidecarConfig: ...
    @property
    def upstream(self) -> UpstreamLink: ...
    @property
    def max_payload(self) -> int: ...
    @property
    def client_auth_required(self) -> bool: ...
    @property
    def flow_paused(self) -> Container[ClientConnection]: ...

    # -- registry and auth
    def register_client(self, client: ClientConnection) -> bool: ...
    def unregister_client(self, client: ClientConnection) -> None: ...
    def client_info(self, client: ClientConnection) -> dict[str, Any]: ...
    def client_authorized(self, options: dict[str, Any]) -> bool: ...

    # -- publish path and flow control
    def publish(self, client: ClientConnection | None, op: Pub, now: float) -> bool: ...
    def publish_run(
        self, op: PubRun, now: float, client: ClientConnection | None = None
    ) -> int | PubRun | SplitFrom: ...
    def after_ingest(self) -> None: ...
    def hold_client(self, client: ClientConnection) -> None: ...
    def flow_pause(self, client: ClientConnection) -> None: ...

    # -- subscriptions
    def subscribe(self, client: ClientConnection, op: Sub) -> bool: ...
    def unsubscribe(self, client: ClientConnection, sid: str, max_msgs: int | None) -> None: ...
    def route(self, sub: ClientSub) -> None: ...
    def local_sub_for(self, client: ClientConnection, subject: str) -> ClientSub | None: ...
