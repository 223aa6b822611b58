"""The NATS port: the listening socket and the registry of application connections.

One job: accept connections and be their `ClientHost` (proxy/ports/host.py): auth (token or
user/password, compared in constant time), the INFO a client gets, the connection limit, the outbound
budget and slow consumers, client keepalives, and the shutdown of every connection. What a connection
asks beyond that is wired straight to its owner: publishes to the `Publisher`, subscriptions to
`Deliveries`, pauses to `FlowControl` (bound methods, so that the hot path pays no extra call).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from collections.abc import Callable, Container
from typing import Any

from policies.engine import Engine
from proxy import __version__
from proxy.config.schema import SidecarConfig
from proxy.nats.protocol import Pub, PubRun, Sub
from proxy.pipeline.deliveries import Deliveries
from proxy.pipeline.flow import FlowControl
from proxy.pipeline.publish import Publisher
from proxy.ports.nats_port import ClientConnection, ClientSub
from proxy.ports.outbound import OutboundBudget
from proxy.upstream.connection import Upstream

log = logging.getLogger(__name__)


def split_host_port(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`, or `:port` for every interface) as a host and a port."""
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class NatsListener:
    """The application connections on the NATS port; implements `ClientHost` for each of them."""

    publish: Callable[[ClientConnection | None, Pub, float], bool]
    publish_run: Callable[..., int | PubRun]
    after_ingest: Callable[[], None]
    hold_client: Callable[[ClientConnection], None]
    flow_pause: Callable[[ClientConnection], None]
    subscribe: Callable[[ClientConnection, Sub], None]
    unsubscribe: Callable[[ClientConnection, str, int | None], None]
    route: Callable[[ClientSub], None]
    local_sub_for: Callable[[ClientConnection, str], ClientSub | None]

    def __init__(
        self,
        config: SidecarConfig,
        engine: Engine,
        upstream: Upstream,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        server_id: str,
        *,
        publisher: Publisher,
        deliveries: Deliveries,
        flow: FlowControl,
    ) -> None:
        self.config = config
        self.engine = engine
        self.upstream = upstream
        self.loop = loop
        self.clock = clock
        self.server_id = server_id
        self._publisher = publisher
        self._flow = flow
        # Wired by the sidecar (its shutdown flag): no new connection while shutting down.
        self.shutting_down: Callable[[], bool] = lambda: False
        self.clients: set[ClientConnection] = set()
        self.slow_consumers = 0
        self.outbound = OutboundBudget(loop, self._outbound_limit)
        self.nats_port: int | None = None
        self._client_ids = itertools.count(1)
        self._servers: list[asyncio.AbstractServer] = []
        self._deliveries = deliveries
        self.publish = publisher.publish
        self.publish_run = publisher.publish_run
        self.after_ingest = publisher.after_ingest
        self.hold_client = flow.hold
        self.flow_pause = flow.pause
        self.subscribe = deliveries.subscribe
        self.unsubscribe = deliveries.unsubscribe
        self.route = deliveries.route
        self.local_sub_for = deliveries.local_sub_for

    @property
    def max_payload(self) -> int:
        """The upstream's limit, which each connection's parser enforces."""
        return self._publisher.max_payload

    @property
    def flow_paused(self) -> Container[ClientConnection]:
        """Connections not read while the upstream socket is backed up (FlowControl.paused)."""
        return self._flow.paused

    # -- the socket ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on `listen.nats`; `nats_port` is the port bound (0 in the config picks a free one)."""
        host, port = split_host_port(self.config.listen.nats)
        server = await self.loop.create_server(
            lambda: ClientConnection(self, next(self._client_ids)),
            host,
            port,
            reuse_address=True,
            backlog=1024,
        )
        self._servers.append(server)
        self.nats_port = server.sockets[0].getsockname()[1]
        log.debug("NATS port listening on %s:%s", host, self.nats_port)

    def stop_accepting(self) -> None:
        """Close the listening socket and stop reading every connection (the shutdown drain)."""
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.pause_reading()

    def close_all(self) -> None:
        """Close every application connection (the end of the shutdown)."""
        for client in list(self.clients):
            client.close()

    def ping_all(self) -> None:
        """Keepalive PINGs; stale clients are closed."""
        for client in list(self.clients):
            client.ping()

    def set_max_payload(self, max_payload: int) -> None:
        """The upstream's limit applies to what each connection's parser accepts."""
        for client in self.clients:
            client.parser.max_payload = max_payload

    # -- auth and INFO -------------------------------------------------------------------------------
    @property
    def client_auth_required(self) -> bool:
        """`clients.token` or `clients.user` is set: a CONNECT must carry them."""
        clients = self.config.clients
        return bool(clients.token or clients.user)

    def client_authorized(self, options: dict[str, Any]) -> bool:
        """Whether a CONNECT's options carry the configured credentials (constant-time comparison)."""
        clients = self.config.clients
        if clients.token:
            given = str(options.get("auth_token", ""))
            return hmac.compare_digest(given.encode(), clients.token.encode())
        if clients.user:
            user_ok = hmac.compare_digest(str(options.get("user", "")).encode(), clients.user.encode())
            pass_ok = hmac.compare_digest(
                str(options.get("pass", "")).encode(), (clients.password or "").encode()
            )
            return user_ok and pass_ok
        return True

    def client_info(self, client: ClientConnection) -> dict[str, Any]:
        """The INFO a new connection gets: the upstream's version and limits, the sidecar's identity."""
        upstream = self.upstream.server_info
        host, _ = split_host_port(self.config.listen.nats)
        info: dict[str, Any] = {
            "server_id": self.server_id,
            "server_name": "kpi-sidecar",
            "version": upstream.get("version", "2.9.10"),
            "proto": 1,
            "go": f"kpi-sidecar/{__version__}",
            "host": host,
            "port": self.nats_port,
            "headers": True,
            "max_payload": self.max_payload,
            "client_id": client.client_id,
            "client_ip": client.remote.rpartition(":")[0],
        }
        if upstream.get("jetstream"):
            info["jetstream"] = True
        if self.client_auth_required:
            info["auth_required"] = True
        return info

    # -- the registry --------------------------------------------------------------------------------
    def _outbound_limit(self) -> int:
        configured = self.config.clients.max_total_pending_bytes
        if configured is not None:
            return configured
        return int(self.engine.config.max_memory_usage_mb * 1_048_576) // 4

    def register_client(self, client: ClientConnection) -> bool:
        """Admit a new connection; False at `clients.maxConnections` or while shutting down."""
        if self.shutting_down() or len(self.clients) >= self.config.clients.max_connections:
            return False
        self.clients.add(client)
        return True

    def unregister_client(self, client: ClientConnection) -> None:
        """A connection closed: forget it everywhere, its subscriptions upstream too."""
        if client not in self.clients:
            return
        self.clients.discard(client)
        self._flow.forget(client)
        self.outbound.forget(client)
        self._deliveries.drop_client(client)
