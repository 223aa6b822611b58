"""The upstream socket's asyncio Protocol and the handler interface the upstream calls back.

One job: turn the bytes of one upstream socket into calls. `UpstreamProtocol` feeds the sans-I/O
`ServerParser` and hands MSGs, -ERRs and write-readiness to the `UpstreamHandler` (the sidecar), PONGs
and INFO updates to its `UpstreamOwner` (`proxy.upstream.connection.Upstream`, which owns the handshake,
the PING bookkeeping and the reconnects). It imports neither of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, cast

from proxy.errors import ProtocolError, UpstreamUnavailable
from proxy.nats.protocol import PING, PONG, PONG_FRAME, Err, Info, Msg, MsgRun, ServerParser, route_msgs
from proxy.upstream.journal import WriteJournal

PongCallback = Callable[[bool], None]


class UpstreamHandler(Protocol):
    """What the upstream tells the sidecar."""

    def on_upstream_connected(self, info: dict[str, Any]) -> None: ...
    def on_upstream_lost(self, unconfirmed: list[Any]) -> None: ...
    def on_upstream_msg(self, msg: Msg) -> None: ...
    def on_upstream_msgs(self, run: MsgRun) -> None: ...
    def on_upstream_error(self, text: str) -> None: ...
    def on_upstream_writable(self) -> None: ...
    def resubscribe_frames(self) -> bytes: ...


class UpstreamOwner(Protocol):
    """What the socket protocol needs from the connection that owns it (`proxy.upstream.connection`)."""

    handler: UpstreamHandler
    connected: bool
    journal: WriteJournal
    server_info: dict[str, Any]

    def on_pong(self) -> None: ...
    def on_lame_duck(self) -> None: ...


class UpstreamProtocol(asyncio.Protocol):
    """Moves bytes between one upstream socket and its owner (the `Upstream`)."""

    def __init__(self, owner: UpstreamOwner) -> None:
        self.owner = owner
        self.parser = ServerParser()
        self.parser.batch = route_msgs is not None  # MsgRuns only when the sidecar can route them in C
        self.transport: asyncio.Transport | None = None
        self.info: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.handshake: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False
        self.reading_held = False
        # Non-fatal -ERRs (permission violations) answered to the handshake's SUBs: handed to the sidecar
        # once connected, never a reason to fail the handshake (nats-server keeps the connection open).
        self.deferred_errors: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        handler = owner.handler
        for op in self.parser.feed_data(data):
            kind = type(op)
            if kind is MsgRun:
                if owner.connected:
                    handler.on_upstream_msgs(op)
            elif kind is Msg:
                if owner.connected:
                    handler.on_upstream_msg(op)
            elif op is PING:
                self.transport.write(PONG_FRAME)  # type: ignore[union-attr]
            elif op is PONG:
                if self.handshake is not None and not self.handshake.done():
                    self.handshake.set_result(None)
                else:
                    owner.on_pong()
            elif type(op) is Info:
                owner.server_info = op.options
                if not self.info.done():
                    self.info.set_result(op.options)
                elif op.options.get("ldm"):
                    owner.on_lame_duck()
            elif type(op) is Err:
                self.on_err(op)

    def on_err(self, op: Err) -> None:
        if self.handshake is not None and not self.handshake.done():
            if not op.fatal:
                self.deferred_errors.append(op.text)
                return
            self.handshake.set_exception(ProtocolError(op.text))
            return
        if not self.info.done():
            self.info.set_exception(ProtocolError(op.text))
            return
        self.owner.handler.on_upstream_error(op.text)
        if op.fatal and self.transport is not None:
            # The server closes after a fatal -ERR; after garbage our parser has stopped: reconnect.
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        err = exc or UpstreamUnavailable("connection closed by the server")
        for fut in (self.info, self.handshake):
            if fut is not None and not fut.done():
                fut.set_exception(err)
        if not self.lost.done():
            self.lost.set_result(None)

    def hold_reading(self, hold: bool) -> None:
        """Stop or resume reading the socket (see proxy/pipeline/delivery_flow.py)."""
        transport = self.transport
        if hold != self.reading_held and transport is not None and not transport.is_closing():
            self.reading_held = hold
            if hold:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.owner.connected and not self.owner.journal.full:
            self.owner.handler.on_upstream_writable()
