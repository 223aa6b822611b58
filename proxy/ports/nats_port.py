"""An application connection on the NATS port: speaks the server side of the client protocol.

One job: one application's bytes in and out (parse, answer PING/CONNECT/+OK/-ERR, deliver MSGs, cut
slow consumers). Everything else it asks of its `ClientHost` (proxy/ports/host.py), the only sidecar
module it knows: the sidecar and the pipeline are never imported here (no import circle).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from policies.roles import ReplyMemory
from proxy.nats.protocol import (
    OK_FRAME,
    PING,
    PING_FRAME,
    PONG,
    PONG_FRAME,
    ClientParser,
    Connect,
    Err,
    Pub,
    PubRun,
    Sub,
    Unsub,
    encode_err,
    encode_info,
    encode_msg,
    is_valid_publish_subject,
    is_valid_subject,
    status_message_headers,
)
from proxy.ports.host import RUN_HOLD, RUN_SPLIT, RUN_TAKEN, SplitFrom
from proxy.ports.subscription import ClientSub

if TYPE_CHECKING:
    from proxy.ports.host import ClientHost

log = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 2.0
# The description of a refusal's status line: "NATS/1.0 503 refused by kpi-sidecar: <reason>".
REFUSED_BY = "refused by kpi-sidecar:"


class ClientConnection(asyncio.Protocol):
    """One application connection; moves bytes and calls the sidecar, never blocks."""

    def __init__(self, host: ClientHost, client_id: int) -> None:
        self.host = host
        self.client_id = client_id
        self.parser = ClientParser(max_payload=host.max_payload)
        self.parser.batch = True
        self.transport: asyncio.Transport | None = None
        self.subs: dict[str, ClientSub] = {}
        # Subscriptions the application removed whose in-flight messages are still delivered (see
        # Deliveries.unsubscribe).
        self.retiring: set[ClientSub] = set()
        self.name = ""
        self.remote = ""
        self.verbose = False
        self.pedantic = False
        self.headers = False
        self.no_responders = False
        self.echo = True
        self.connect_received = False
        self.pongs_waiting = 0
        self.sub_generation = 0
        # Replies that arrived behind each awaited PONG, released with it, in order.
        self._after_pong: deque[list[bytes]] = deque()
        self.pings_out = 0
        self.closed = False
        self.held: list[Any] = []
        # Reading stops while ops are held (engine backpressure) or the upstream socket is backed up
        # (the sidecar's flow_paused set).
        self._out = bytearray()
        # Bytes this connection had waiting at its last flush, as counted in the sidecar's OutboundBudget.
        self.reported_pending = 0
        self._flush_scheduled = False
        self._auth_timer: asyncio.TimerHandle | None = None
        # Reply subjects under a custom inbox prefix delivered to this application (None until one is).
        self.replies: ReplyMemory | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        host = self.host
        if not host.register_client(self):
            transport.write(encode_err("maximum connections exceeded"))
            transport.close()
            self.closed = True
            return
        transport.write(encode_info(host.client_info(self)))
        if host.client_auth_required:
            self._auth_timer = host.loop.call_later(AUTH_TIMEOUT_S, self._auth_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        ops = self.parser.feed_data(data)
        if self.held:
            self.held.extend(ops)
            return
        host = self.host
        self.process(ops, host.clock())
        if host.upstream.paused:
            host.flow_pause(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self.host.unregister_client(self)

    # -- protocol ------------------------------------------------------------------------------------
    def process(self, ops: list[Any], now: float) -> None:
        """Handle parsed ops in order; stops (holding the rest) when the sidecar applies backpressure."""
        host = self.host
        for i, op in enumerate(ops):
            kind = type(op)
            if kind is PubRun:
                # A run goes whole unless verbose, pedantic, unauthenticated or echo=false (one by one).
                plain = not (
                    self.verbose
                    or self.pedantic
                    or not self.echo
                    or (not self.connect_received and host.client_auth_required)
                )
                taken = host.publish_run(op, now, self) if plain else RUN_SPLIT
                if taken == RUN_TAKEN:
                    continue
                if taken != RUN_SPLIT and type(taken) is not SplitFrom:
                    # The PubAck window is full: hold it (or its rest), as a PUB below.
                    self._hold(ops[i:] if taken == RUN_HOLD else [taken, *ops[i + 1 :]])
                    break
                split = ClientParser(max_payload=-1)
                split.headers = True  # HPUBs in a run were accepted already
                frames = taken.frames if type(taken) is SplitFrom else op.frames
                self.process(split.feed_data(frames) + list(ops[i + 1 :]), now)
                return
            if kind is Pub:
                if not self.connect_received and host.client_auth_required:
                    self.fatal("Authorization Violation")
                    return
                if self.pedantic and not is_valid_publish_subject(op.subject):
                    # nats-server reports it and still processes the message.
                    self.reply(encode_err("Invalid Publish Subject"))
                if not host.publish(self, op, now):
                    self._hold(ops[i:])
                    break
                if self.verbose:
                    self.reply(OK_FRAME)
            elif op is PING:
                self.on_ping()
            elif op is PONG:
                self.pings_out = 0
            elif kind is Sub:
                if not self._check_auth():
                    return
                if not is_valid_subject(op.subject) or (op.queue is not None and not op.queue.strip()):
                    self.reply(encode_err("Invalid Subject"))
                    continue
                if not host.subscribe(self, op):
                    self.reply(encode_err("maximum subscriptions exceeded"))
                    continue
                self.sub_generation += 1
                if self.verbose:
                    self.reply(OK_FRAME)
            elif kind is Unsub:
                if not self._check_auth():
                    return
                host.unsubscribe(self, op.sid, op.max_msgs)
                self.sub_generation += 1
                if self.verbose:
                    self.reply(OK_FRAME)
            elif kind is Connect:
                if not self.on_connect(op.options):
                    return
            elif kind is Err:
                if op.fatal:
                    self.fatal(op.text)
                    return
                self.reply(encode_err(op.text))
        host.after_ingest()

    def _hold(self, ops: list[Any]) -> None:
        """Backpressure: keep these ops, not read until the sidecar has room (it retries after a pump)."""
        self.held = list(ops)
        self.sync_reading()
        self.host.hold_client(self)

    def resume(self) -> bool:
        """Retry held ops after the sidecar made room; True when nothing is held any more."""
        ops, self.held = self.held, []
        self.process(ops, self.host.clock())
        if self.held:
            return False
        self.sync_reading()
        return True

    def sync_reading(self) -> None:
        """Pause or resume reading from the application to match `held` and the sidecar's flow control."""
        transport = self.transport
        if transport is None or self.closed:
            return
        pause = bool(self.held) or self in self.host.flow_paused
        if pause and transport.is_reading():
            transport.pause_reading()
        elif not pause and not transport.is_reading():
            transport.resume_reading()

    def on_connect(self, options: dict[str, Any]) -> bool:
        host = self.host
        # nats-server decodes CONNECT into the connection's options with Go's encoding/json: keys match
        # case-insensitively (the last spelling wins), null leaves a field as it was, and a key left out
        # keeps its value from an earlier CONNECT; the first starts from nats-server's defaults (verbose,
        # pedantic and echo on; real clients send verbose and pedantic as false).
        given = {key.lower(): value for key, value in options.items() if value is not None}
        if host.client_auth_required and not host.client_authorized(given):
            self.fatal("Authorization Violation")
            return False
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        first = not self.connect_received
        self.connect_received = True
        self.verbose = bool(given.get("verbose", True if first else self.verbose))
        self.pedantic = bool(given.get("pedantic", True if first else self.pedantic))
        self.headers = bool(given.get("headers", self.headers))
        self.no_responders = bool(given.get("no_responders", self.no_responders)) and self.headers
        self.echo = bool(given.get("echo", self.echo))
        for sub in self.subs.values():
            self.host.route(sub)  # echo=false: its messages are matched against its own, one by one
        self.name = str(given.get("name", self.name))[:256]
        if self.verbose:
            self.reply(OK_FRAME)
        return True

    def _check_auth(self) -> bool:
        if not self.connect_received and self.host.client_auth_required:
            self.fatal("Authorization Violation")
            return False
        return True

    def _auth_timeout(self) -> None:
        self._auth_timer = None
        if not self.connect_received and not self.closed:
            self.fatal("Authentication Timeout")

    def on_ping(self) -> None:
        # A PONG promises that earlier publishes were taken in charge (they were, synchronously) and that
        # earlier SUB/UNSUBs are registered upstream. Clients (nats-py among them) may write PING ahead of
        # a SUB still in their own buffer, so every PING waits for an upstream round trip (one upstream
        # PING per loop iteration for all clients) that followed every SUB/UNSUB received before the PONG
        # goes out. With the upstream down, answer at once (subscriptions are replayed on reconnect).
        if self.host.upstream.connected or self.pongs_waiting:
            self.pongs_waiting += 1
            self._after_pong.append([])
            self._await_upstream()
        else:
            self.send(PONG_FRAME)

    def _await_upstream(self) -> None:
        generation = self.sub_generation
        self.host.upstream.confirm(lambda ok: self._upstream_ponged(ok, generation))

    def _upstream_ponged(self, ok: bool, generation: int, polled: bool = False) -> None:
        if self.closed:
            return
        if ok and not polled:
            # Let the loop poll the sockets once more first: a SUB already sitting in this client's socket
            # buffer is then read before the PONG is decided.
            loop = self.host.loop
            loop.call_soon(loop.call_soon, self._upstream_ponged, ok, generation, True)
            return
        if ok and generation != self.sub_generation:
            self._await_upstream()  # a SUB/UNSUB came in meanwhile: one more round trip covers it
            return
        self.pongs_waiting -= 1
        self.send(PONG_FRAME)
        for data in self._after_pong.popleft():
            self.send(data)

    # -- output --------------------------------------------------------------------------------------
    def reply(self, data: bytes) -> None:
        """Answer one of the client's own ops (+OK, -ERR): never ahead of a PONG still awaited."""
        if self._after_pong:
            self._after_pong[-1].append(data)
        else:
            self.send(data)

    def send(self, data: bytes) -> None:
        """Queue bytes for the application; one write per loop iteration."""
        self._out += data
        self.wake()

    def wake(self) -> None:
        """Write `_out` at the end of this loop iteration (the C router appends to it directly)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.host.loop.call_soon(self.flush)

    @property
    def backlog(self) -> int:
        """Bytes waiting for the application: not yet written, and in the transport's buffer."""
        transport = self.transport
        return len(self._out) + (transport.get_write_buffer_size() if transport is not None else 0)

    def flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if self.closed or transport is None or not self._out:
            return
        data, self._out = self._out, bytearray()
        transport.write(data)
        pending = transport.get_write_buffer_size()
        if pending > self.host.config.clients.max_pending_bytes:
            # Like nats-server: a client that does not read its messages is cut off, not buffered forever.
            log.warning("client %s (%s) is a slow consumer, disconnecting", self.client_id, self.name)
            self.cut_slow_consumer()
        elif pending or self.reported_pending:
            self.host.outbound.update(self, pending)

    def cut_slow_consumer(self) -> None:
        """Disconnect a client that does not read its messages, and give its buffers back."""
        if self.closed:
            return
        host = self.host
        host.slow_consumers += 1
        host.outbound.forget(self)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        host.outbound.release_memory()

    def deliver(
        self, sub: ClientSub, subject: bytes, reply: bytes | None, hdr_size: int, body: bytes
    ) -> None:
        """Deliver an upstream message on one of this client's subscriptions."""
        if hdr_size > 0 and not self.headers:
            if hdr_size == len(body) and body.startswith(b"NATS/1.0 "):
                return  # a status message (e.g. no responders) the client did not ask for
            body = body[hdr_size:]
            hdr_size = -1
        elif hdr_size == len(body) and not self.no_responders and body.startswith(b"NATS/1.0 503"):
            return
        self.send(encode_msg(subject, sub.sid_bytes, reply, hdr_size, body))

    def remember_reply(self, subject: str, now: float) -> None:
        """A message with this (custom-prefix) reply subject was delivered: a publish to it is a reply."""
        replies = self.replies
        if replies is None:
            replies = self.replies = ReplyMemory()
        replies.remember(subject, now)

    def send_status(self, reply: str, code: int, reason: str) -> None:
        """Answer a request on its reply subject with a status message (503 when refused by policy): the
        status line names the sidecar and the reason, and so does the KPI-Refused header."""
        if not self.headers or self.closed:
            return
        sub = self.host.local_sub_for(self, reply)
        if sub is None:
            return
        headers = status_message_headers(code, f"{REFUSED_BY} {reason}")
        headers = headers[:-2] + f"KPI-Refused: {reason}\r\n\r\n".encode()
        self.send(encode_msg(reply.encode(), sub.sid_bytes, None, len(headers), headers))

    def ping(self) -> bool:
        """Keepalive from the sidecar; False when the client is stale and was closed."""
        if self.pings_out >= self.host.config.clients.max_pings_out:
            self.fatal("Stale Connection")
            return False
        self.pings_out += 1
        self.send(PING_FRAME)
        return True

    def fatal(self, text: str) -> None:
        """Send `-ERR '<text>'` then close, as nats-server does for fatal errors."""
        if self.closed:
            return
        self.send(encode_err(text))
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()
