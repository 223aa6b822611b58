"""The sidecar's one connection to the NATS cluster: handshake, auth, TLS, keepalive, reconnect, writes.

The upstream speaks the client protocol through the project's own sans-I/O codec rather than nats-py:
nats-py delivers each message through a per-subscription coroutine and a parsed `Msg` (headers turned
into a dict, so not byte-for-byte), and hides the PING/PONG round trips the sidecar uses to confirm
critical messages. See docs/architecture.md.

Collaborators: `proxy.upstream.protocol` (the socket's asyncio Protocol and the `UpstreamHandler` the
sidecar implements), `proxy.upstream.auth` (CONNECT credentials and TLS), `proxy.upstream.journal`
(non-critical writes awaiting a PONG).

Size: one class on purpose, the whole life of the one connection (handshake, writes, confirmations,
keepalive, lame duck, reconnect, reading held for deliveries); its collaborators are the modules above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from proxy.config.schema import UpstreamConfig
from proxy.errors import ProtocolError, UpstreamUnavailable
from proxy.nats.protocol import PING_FRAME, encode_connect, encode_sub, encode_unsub
from proxy.upstream.auth import connect_options, ssl_context
from proxy.upstream.journal import WriteJournal
from proxy.upstream.protocol import PongCallback, UpstreamHandler, UpstreamProtocol

log = logging.getLogger(__name__)

FLUSH_BYTES = 256 * 1024
DIRECT_WRITE_BYTES = 16 * 1024
# A PING's round trip is an RTT sample only with at most this many bytes written and unconfirmed ahead of it.
RTT_QUIET_BYTES = 64 * 1024


class Upstream:
    """One upstream NATS connection, reconnected forever with capped exponential backoff."""

    def __init__(self, config: UpstreamConfig, handler: UpstreamHandler) -> None:
        self.config = config
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.connected = False
        # PINGs written (confirmations and keepalives): what is written after one is not covered by its
        # PONG. PONGs received on this connection, counted from pings_written at connect, so that the
        # k-th PONG confirms everything written before PING number k.
        self.pings_written = 0
        self.pongs_received = 0
        # Non-critical publishes written and not yet confirmed (see proxy/upstream/journal.py).
        self.journal = WriteJournal(config.max_unconfirmed_bytes)
        self.lame_duck = False
        # Leaving a lame-duck server: nothing more is written to it (the queue holds it meanwhile).
        self.moving = False
        self.server_info: dict[str, Any] = {}
        self.connected_url: str | None = None
        self.reconnects = 0
        self.last_error: str | None = None
        self.disconnected_at: float | None = time.monotonic()
        self._proto: UpstreamProtocol | None = None
        self._out = bytearray()
        self._flush_scheduled = False
        self._ping_requested = False
        self._pending_callbacks: list[PongCallback] = []
        # One entry per PING in flight: the callbacks its PONG confirms (None for keepalive PINGs).
        self._pong_waiters: deque[list[PongCallback] | None] = deque()
        self._ping_sent_at: deque[float] = deque()
        # Called with (now, seconds) for each PONG: the round trip of the PING it answers (issue #16),
        # for PINGs written with at most RTT_QUIET_BYTES unconfirmed ahead of them (one flag per PING).
        self.on_rtt: Callable[[float, float], None] | None = None
        self._ping_quiet: deque[bool] = deque()
        # Where the last PING of confirm_here ends in _out (-1: none since the last flush).
        self._ping_end = -1
        self._pings_out = 0
        self._closing = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._connected_event = asyncio.Event()

    # -- state ---------------------------------------------------------------------------------------
    @property
    def can_send(self) -> bool:
        """True when publishes may be written now (connected and the socket is not backed up)."""
        proto = self._proto
        return (
            self.connected
            and proto is not None
            and not proto.paused
            and not self.moving
            and self.journal.nbytes < self.journal.limit
        )

    @property
    def can_stream(self) -> bool:
        """True when a client's read may be written even while the socket is backed up (`paused`): the
        caller then pauses that client's reading (flow control), so at most one read per client goes past
        `maxPendingBytes`."""
        return self.connected and self._proto is not None and not self.moving

    @property
    def paused(self) -> bool:
        """Connected, and more than `maxPendingBytes` wait for the socket, or `maxUnconfirmedBytes` wait for
        a PONG (a server that stopped reading looks the same from here)."""
        proto = self._proto
        return self.connected and proto is not None and (proto.paused or self.journal.full)

    @property
    def pending_bytes(self) -> int:
        proto = self._proto
        buffered = proto.transport.get_write_buffer_size() if proto and proto.transport else 0
        return len(self._out) + buffered

    def hold_reading(self, hold: bool) -> bool:
        """Stop (True) or resume reading the socket, so that TCP pushes back on the server while the
        applications are behind (proxy/pipeline/delivery_flow.py); False when not connected."""
        proto = self._proto
        if not self.connected or proto is None or proto.transport is None:
            return False
        if hold and not proto.reading_held and self._ping_quiet:
            # A PONG that waits in the unread socket measures the sidecar, not the server: the round
            # trips of the PINGs in flight are no latency samples (nor is their age).
            self._ping_quiet = deque(False for _ in self._ping_quiet)
        proto.hold_reading(hold)
        return True

    # -- writing -------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue bytes for the upstream; they go out in one write at the end of this loop iteration."""
        if len(data) >= DIRECT_WRITE_BYTES and self.connected and self._proto is not None:
            # A large run goes to the socket as it is (after what is buffered, to keep the order): one
            # copy of every forwarded byte less.
            self.flush()
            self._proto.transport.write(data)  # type: ignore[union-attr]
            return
        out = self._out
        out += data
        if len(out) >= FLUSH_BYTES:
            # A big read can release megabytes in one loop iteration: write as we go so that the
            # transport's pause_writing() tells the engine to hold back in time.
            self.flush()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def track(self, entry: Any, nbytes: int) -> None:
        """Keep a non-critical publish just written (an OutMsg or a RunEntry) until a PONG confirms it."""
        journal = self.journal
        unpinged = journal.add(entry, nbytes, self.pings_written)
        if unpinged >= journal.limit >> 2:
            # A quarter of the bound written since the last PING: ask for one, so that under heavy traffic
            # confirmations keep up (otherwise keepalives and critical confirmations cover the journal).
            self.request_ping()
            if journal.full:
                self.check_stale(suspect=True)

    def request_ping(self) -> None:
        """Write a PING at the end of this loop iteration (its PONG confirms the journal)."""
        if self.connected and not self._ping_requested:
            self._ping_requested = True
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self.flush)

    def confirm(self, callback: PongCallback) -> None:
        """Call `callback(True)` once the server has answered a PING sent after everything written so far.

        `callback(False)` when the connection is lost first. Callbacks of one flush share one PING.
        """
        if not self.connected:
            callback(False)
            return
        self._pending_callbacks.append(callback)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def confirm_here(self, callback: PongCallback) -> None:
        """Like `confirm`, with its PING placed now: ahead of whatever is written after this call (the cut
        between what an application did before and after joining or leaving a merged subscription).
        Consecutive calls with nothing written between them share one PING."""
        proto = self._proto
        if not self.connected or proto is None or proto.transport is None:
            callback(False)
            return
        waiters = self._pong_waiters[-1] if self._pong_waiters else None
        if self._ping_end == len(self._out) and waiters is not None:
            waiters.append(callback)
            return
        self._pending_callbacks.append(callback)
        self._append_ping(proto)
        self._ping_end = len(self._out)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def _append_ping(self, proto: UpstreamProtocol) -> None:
        assert proto.transport is not None
        self._out += PING_FRAME
        self._pong_waiters.append(self._pending_callbacks or None)
        self._ping_sent_at.append(time.monotonic())
        # A PING behind megabytes measures throughput (the server reads them first), not latency.
        # Nor is one whose PONG would wait while the upstream is not read (delivery flow).
        quiet = not proto.reading_held and self.journal.nbytes + self.pending_bytes <= RTT_QUIET_BYTES
        self._ping_quiet.append(quiet)
        self._pending_callbacks = []
        self._ping_requested = False
        self.pings_written += 1

    def flush(self) -> None:
        """Write what is buffered, followed by a PING when someone waits for a confirmation."""
        self._flush_scheduled = False
        proto = self._proto
        if not self.connected or proto is None or proto.transport is None:
            return
        if self._pending_callbacks or self._ping_requested:
            self._append_ping(proto)
        self._ping_end = -1
        if self._out:
            data, self._out = self._out, bytearray()
            proto.transport.write(data)

    def subscribe(self, usid: int, subject: str, queue: str | None) -> None:
        if self.connected:
            self.write(encode_sub(subject, queue, usid))

    def unsubscribe(self, usid: int, max_msgs: int | None = None) -> None:
        if self.connected:
            self.write(encode_unsub(usid, max_msgs))

    def on_pong(self) -> None:
        self._pings_out = 0
        self.pongs_received += 1
        journal = self.journal
        if journal.nbytes:
            was_full = journal.full
            journal.confirm(self.pongs_received)
            if was_full and not journal.full and self.connected:
                proto = self._proto
                if proto is not None and not proto.paused:
                    self.handler.on_upstream_writable()
        if self._ping_sent_at:
            sent = self._ping_sent_at.popleft()
            quiet = self._ping_quiet.popleft() if self._ping_quiet else False
            if quiet and self.on_rtt is not None:
                now = time.monotonic()
                self.on_rtt(now, now - sent)
        if self._pong_waiters:
            callbacks = self._pong_waiters.popleft()
            if callbacks:
                for cb in callbacks:
                    cb(True)

    def oldest_ping_age(self, now: float) -> float:
        """Seconds the oldest PING in flight has waited for its PONG (0 when none, or when it was written
        behind more than RTT_QUIET_BYTES)."""
        sent_at = self._ping_sent_at
        if not sent_at or not self.connected or not self._ping_quiet or not self._ping_quiet[0]:
            return 0.0
        return max(0.0, now - sent_at[0])

    def check_stale(self, suspect: bool = False) -> bool:
        """Declare the connection dead (and reconnect) when a PING has waited for its PONG longer than
        `pingIntervalMs` x `maxPingsOut`, or only `pingIntervalMs` when the server also stopped reading
        (`suspect`: the socket or the journal backed up; a slow but live server still answers a PING
        within an interval). Called by the keepalive and when flow control stalls. True when it did."""
        sent_at = self._ping_sent_at
        proto = self._proto
        if not sent_at or not self.connected or proto is None or proto.transport is None:
            return False
        if proto.transport.is_closing():
            return False  # declared dead already: the loss is on its way
        waited = time.monotonic() - sent_at[0]
        cfg = self.config
        if waited * 1000 < cfg.ping_interval_ms * (1 if suspect else cfg.max_pings_out):
            return False
        log.warning("upstream stale: no PONG for %.1fs, reconnecting", waited)
        self._abort_stale(proto)
        return True

    def _abort_stale(self, proto: UpstreamProtocol) -> None:
        self.last_error = "stale connection"
        transport = proto.transport
        assert transport is not None
        # Reset rather than close: the kernel must not deliver, after the server wakes up, the bytes
        # still queued on this socket (they are taken back and resent on the next connection).
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def on_lame_duck(self) -> None:
        """The server announced lame-duck mode (INFO `ldm`): it will close its clients soon. With other
        servers configured, move now: once a PONG confirms what was written, close and reconnect to
        the next one. With one server, stay until it closes (then reconnect as after any loss)."""
        if self.lame_duck or self._closing:
            return
        self.lame_duck = True
        if len(self.config.servers) < 2:
            log.info("upstream %s entered lame-duck mode; no other server configured", self.connected_url)
            return
        log.info("upstream %s entered lame-duck mode: moving to the next server", self.connected_url)
        proto = self._proto
        self.moving = True

        def confirmed(ok: bool) -> None:
            if ok and proto is self._proto and proto is not None and proto.transport is not None:
                proto.transport.close()

        self.confirm(confirmed)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = self.loop.create_task(self._run(), name="upstream")

    async def close(self) -> None:
        """Flush what is buffered and close; no reconnect after this."""
        self._closing = True
        self.flush()
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_connected(self) -> None:
        """Return once connected (wrap in asyncio.timeout to bound the wait)."""
        await self._connected_event.wait()

    async def _run(self) -> None:
        servers = self.config.servers
        attempt = 0
        index = 0
        while not self._closing:
            url = servers[index % len(servers)]
            index += 1
            try:
                proto = await self._connect(url)
            except (OSError, TimeoutError, ProtocolError, UpstreamUnavailable, ssl.SSLError) as err:
                text = str(err) or type(err).__name__
                if attempt == 0 or text != self.last_error:
                    log.warning("upstream %s unavailable: %s", url, text)
                self.last_error = text
                attempt += 1
                delay_ms = min(
                    self.config.max_reconnect_wait_ms, self.config.reconnect_wait_ms * 2 ** min(attempt, 16)
                )
                await asyncio.sleep(delay_ms / 1000 * (0.5 + self._rng.random() / 2))
                continue
            attempt = 0
            self.last_error = None
            await proto.lost
            self._on_lost(url)

    async def _connect(self, url: str) -> UpstreamProtocol:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 4222
        timeout = self.config.connect_timeout_ms / 1000
        transport, proto = await asyncio.wait_for(
            self.loop.create_connection(lambda: UpstreamProtocol(self), host, port), timeout
        )
        try:
            info = await asyncio.wait_for(proto.info, timeout)
            use_tls = parts.scheme == "tls" or self.config.tls is not None or info.get("tls_required")
            if use_tls:
                new_transport = await asyncio.wait_for(
                    self.loop.start_tls(transport, proto, ssl_context(self.config), server_hostname=host),
                    timeout,
                )

                proto.transport = new_transport
            proto.transport.set_write_buffer_limits(high=self.config.max_pending_bytes)
            proto.handshake = self.loop.create_future()
            connect = encode_connect(connect_options(self.config, info, parts, bool(use_tls)))
            # Subscriptions go before the PING so that they are all registered once its PONG arrives.
            proto.transport.write(connect + self.handler.resubscribe_frames() + PING_FRAME)
            await asyncio.wait_for(proto.handshake, timeout)
        except BaseException:
            transport.abort()
            raise
        self._proto = proto
        self._reset_pings()
        self._ping_requested = False
        self.pongs_received = self.pings_written
        self.lame_duck = False
        self.moving = False
        self._pings_out = 0
        self.connected = True
        self._connected_event.set()
        self.connected_url = url
        self.disconnected_at = None
        self._schedule_ping()
        server, version = info.get("server_id"), info.get("version")
        log.info("upstream connected to %s (server %s, version %s)", url, server, version)
        self.handler.on_upstream_connected(info)
        for text in proto.deferred_errors:
            self.handler.on_upstream_error(text)
        proto.deferred_errors = []
        return proto

    def _on_lost(self, url: str) -> None:
        was_connected = self.connected
        self.connected = False
        self._connected_event.clear()
        self._proto = None
        self.disconnected_at = time.monotonic()
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        callbacks = [cb for waiters in self._pong_waiters if waiters for cb in waiters]
        callbacks += self._pending_callbacks
        self._reset_pings()
        self._pending_callbacks = []
        unconfirmed = self.journal.take_all()
        if was_connected:
            self.reconnects += 1
            if not self._closing:
                log.warning("upstream connection to %s lost", url)
            self.handler.on_upstream_lost(unconfirmed)
        for cb in callbacks:
            cb(False)

    def _reset_pings(self) -> None:
        """A new connection or a lost one: no PING is outstanding and nothing is buffered."""
        self._out = bytearray()
        self._ping_end = -1
        self._pong_waiters.clear()
        self._ping_sent_at.clear()
        self._ping_quiet.clear()

    def _schedule_ping(self) -> None:
        self._ping_timer = self.loop.call_later(self.config.ping_interval_ms / 1000, self._keepalive)

    def _keepalive(self) -> None:
        proto = self._proto
        if not self.connected or proto is None or proto.transport is None:
            return
        if self._pings_out >= self.config.max_pings_out:
            log.warning("upstream stale: %d PINGs unanswered, reconnecting", self._pings_out)
            self._abort_stale(proto)
            return
        if self.check_stale(suspect=self.paused):
            return
        self._pings_out += 1
        self._ping_requested = True  # flush writes it after what is buffered
        self.flush()
        self._schedule_ping()
