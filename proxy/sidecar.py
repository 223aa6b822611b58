"""The running sidecar: owns the engine, the upstream, the application connections and the timers."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies import roles
from policies.circuit_breaker import BreakerState
from policies.config import BatchMode, Delivery, Priority
from policies.engine import Decision, Engine, Verdict
from policies.roles import DATA, REPLY, REQUEST, Role, role_of, subject_role
from policies.subjects import subject_matches
from proxy import __version__
from proxy.config.schema import SidecarConfig
from proxy.nats.envelope import RECORD_OVERHEAD, envelope_headers, pack, record_of
from proxy.nats.protocol import (
    DEFAULT_MAX_PAYLOAD,
    ClientParser,
    Msg,
    MsgRun,
    Pub,
    PubRun,
    Sub,
    add_header,
    encode_err,
    encode_pub,
    encode_sub,
    encode_unsub,
    header_value,
    next_msg,
    route_msgs,
    split_pub,
)
from proxy.pipeline.resources import ResourceMonitor
from proxy.pipeline.signal_feeds import SignalFeeds, log_class_transitions
from proxy.pipeline.spool import Spool
from proxy.pipeline.stream_monitor import TOKEN_PREFIX as STREAM_TOKEN
from proxy.pipeline.stream_monitor import StreamMonitor
from proxy.ports.nats_port import ClientConnection, ClientSub
from proxy.ports.outbound import OutboundBudget
from proxy.upstream.connection import Upstream
from proxy.upstream.journal import RunEntry

log = logging.getLogger(__name__)


CRITICAL = Priority.CRITICAL
FORWARD = Verdict.FORWARD
QUEUE = Verdict.QUEUE
DROP = Verdict.DROP
BLOCK = Verdict.BLOCK
HALF_OPEN = BreakerState.HALF_OPEN
CLOSED = BreakerState.CLOSED
ENVELOPE = BatchMode.ENVELOPE
SPOOLED = Decision(Verdict.QUEUE, "spooled", ())
TOO_BIG = Decision(Verdict.DROP, "max_payload", ())
TICK_INTERVAL_S = 1.0
# Reply subjects under these prefixes have their role by themselves; others are remembered per client.
ROLE_PREFIXES = tuple(prefix.encode() for prefix, _ in roles.ROLE_PREFIXES)
# The upstream subscription that receives PubAcks for `delivery: jetstream`; application subs start at 1.
ACK_SID = 0
# -ERR 'Permissions Violation for Subscription to "<subject>"[ using queue "<queue>"]' (nats-server).
_SUB_DENIED = re.compile(r'subscription to "(.*?)"(?: using queue "(.*?)")?\s*$', re.IGNORECASE)
# Bound on the echoes one echo=false subscription waits for (its client's own in-flight messages).
MAX_PENDING_ECHOES = 10_000
# Bound on the subjects whose last upstream failure time is remembered (the breaker table's size).
MAX_FAILURE_RECORDS = 1000
# Messages released from the queue per step of the pump (the upstream also flushes every 256 KiB).
PUMP_SLICE = 1024
# Room kept in an envelope for its control line and KPI-Batch-* headers under the upstream's max_payload.
ENVELOPE_HEADER_ROOM = 256


class OutMsg:
    """A message on its way upstream: the engine's queue item."""

    __slots__ = (
        "ack_token",
        "client",
        "frame",
        "priority",
        "received_at",
        "reply",
        "role",
        "rule",
        "size",
        "subject",
    )

    def __init__(
        self,
        subject: str,
        reply: str | None,
        priority: Priority,
        size: int,
        frame: bytes,
        client: ClientConnection | None,
        received_at: float,
        rule: Any,
        role: Role = DATA,
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.role = role
        self.priority = priority
        self.size = size
        self.frame = frame
        self.client = client
        self.received_at = received_at
        self.rule = rule
        self.ack_token: str | None = None


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Sidecar:
    """Everything that runs: servers, upstream, engine, timers. Built from a validated SidecarConfig."""

    def __init__(self, config: SidecarConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        # The shell's one clock, read once per batch of work and passed to the engine: time.monotonic, not
        # loop.time(), which uvloop moves in whole milliseconds (latencies need better).
        self.clock = time.monotonic
        self.server_id = "KPI" + secrets.token_hex(12).upper()
        self.engine = Engine(
            config.backpressure,
            config.policies,
            rng=rng or random.Random(),
            now=self.clock(),
            max_subjects=config.metrics.max_subjects,
        )
        self.upstream = Upstream(config.upstream, self)
        self.resources = ResourceMonitor()
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.clients: set[ClientConnection] = set()
        self.subs: dict[int, ClientSub] = {}
        self.slow_consumers = 0
        self.outbound = OutboundBudget(self.loop, self._outbound_limit)
        self.started_at = self.clock()
        self.shutting_down = False
        self.nats_port: int | None = None
        self.bound_ports: dict[str, int | None] = {}
        self._client_ids = itertools.count(1)
        self._usids = itertools.count(1)
        self._msg_ids = itertools.count(1)
        self._servers: list[asyncio.AbstractServer] = []
        self._pump_scheduled = False
        self._pump_timer: asyncio.TimerHandle | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._held_clients: deque[ClientConnection] = deque()
        # Clients not read while the upstream socket is backed up (flow control, see flow_pause).
        self.flow_paused: set[ClientConnection] = set()
        # Subscriptions whose plain MSGs the C router writes straight to their application (usid ->
        # (client, client sid)): everything but echo=false clients and subscriptions with a max count.
        self.routes: dict[int, tuple[ClientConnection, bytes]] = {}
        self.flow_pauses = 0
        self.upstream_stalled = False  # backed up for longer than upstream.flowControlMs
        self._flow_timer: asyncio.TimerHandle | None = None
        # Critical messages written upstream and not yet confirmed by a PONG (one batch per flush, keyed
        # by an id), and those whose connection died before the PONG, to resend after the reconnect.
        self._unconfirmed_batch: list[OutMsg] = []
        self._batch_ping = -1
        self._inflight: dict[int, list[OutMsg]] = {}
        self._batch_ids = itertools.count(1)
        self._resend: deque[OutMsg] = deque()
        spool_cfg = config.spool
        self.spool: Spool | None = (
            Spool(Path(spool_cfg.path), spool_cfg.max_bytes) if spool_cfg.path is not None else None
        )
        # `delivery: jetstream` critical messages waiting for their PubAck, by the token in their reply.
        self._ack_prefix = f"_KPI_ACK.{self.server_id}."
        self._ack_subscribed = False
        self.ack_subscription_denied = False
        self._acks: dict[str, tuple[OutMsg, float]] = {}
        # Breakers: subjects of half-open trials written in this loop iteration, and last failure times.
        self._trial_subjects: set[str] = set()
        self._trial_ping = -1
        # `batchMode: envelope` messages of this loop iteration, by subject.
        self._envelopes: dict[str, list[OutMsg]] = {}
        self._last_failure: dict[str, float] = {}
        self._ack_tokens = itertools.count(1)
        self._replay_wakeup = asyncio.Event()
        self._replay_task: asyncio.Task[None] | None = None
        self.replayed = 0
        # Requests refused by policy (answered with a 503 status), by reason.
        self.refused: dict[str, int] = {}
        # Called with `now` after every tick (history ring, load test bookkeeping).
        self.tick_listeners: list[Callable[[float], None]] = []
        # Issue #16: RTT and PubAck latency, spool trend; the fill of the streams jetstream rules feed.
        self.signal_feeds = SignalFeeds(self)
        self.stream_monitor = StreamMonitor(self)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the spool, start the upstream connection, the NATS listener and the timers."""
        if self.spool is not None:
            await self.spool.open()
            self._replay_task = self.loop.create_task(self._replay_loop(), name="spool-replay")
        self.upstream.start()
        # Give the upstream one connect timeout so that applications connecting at startup find interest
        # registered when their flush returns; past that, start anyway (publishes queue meanwhile).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.upstream.connect_timeout_ms / 1000):
                await self.upstream.wait_connected()
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
        self._tick_task = self.loop.create_task(self._tick_loop(), name="tick")
        self.stream_monitor.start()
        log.debug("NATS port listening on %s:%s", host, self.nats_port)

    async def shutdown(self) -> None:
        """Stop accepting, forward what can be forwarded within the grace, spool the critical rest."""
        if self.shutting_down:
            return
        self.shutting_down = True
        grace = self.config.shutdown.grace_ms / 1000
        deadline = self.clock() + grace
        log.info("shutting down: draining for up to %.1fs", grace)
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.pause_reading()
        # Forward everything the upstream can take, keeping a margin of the grace to write the rest to disk.
        margin = min(2.0, grace / 4)
        while self.clock() < deadline - margin:
            if self.upstream.can_send:
                self._resend_unconfirmed()
                now = self.clock()
                for msg in self.engine.drain(now):
                    self._write(msg, now)
            if self.upstream.journal.nbytes:
                self.upstream.request_ping()  # its PONG confirms the non-critical publishes written
            self.upstream.flush()
            settled = (
                self.engine.queue_size == 0
                and not self._resend
                and not self._inflight
                and not self._acks
                and not (self.upstream.journal.nbytes and self.upstream.connected)
            )
            if settled and (self.spool is None or self.spool.messages == 0 or not self.upstream.can_send):
                break
            await asyncio.sleep(0.02)
        if self._replay_task is not None:
            self._replay_task.cancel()
        # Written and never confirmed: the upstream may not have them; counted like what is still queued.
        self._take_back(self.upstream.journal.take_all())
        spooled = dropped = 0
        for msg in self.engine.drain_all_for_shutdown():
            if msg.priority is CRITICAL and self._spool_one(msg):
                self.engine.note_spooled(msg)
                spooled += 1
            else:
                self.engine.note_dropped(msg, "shutdown")
                dropped += 1
        # Written but never confirmed: on disk too (JetStream's duplicate window removes a resend).
        unconfirmed = list(self._resend) + [msg for msg, _ in self._acks.values()]
        for batch in self._inflight.values():
            unconfirmed.extend(batch)
        for msg in unconfirmed:
            if self._spool_one(msg):
                spooled += 1
        if spooled or dropped:
            log.warning("shutdown: %d critical messages spooled, %d messages dropped", spooled, dropped)
        for client in list(self.clients):
            client.close()
        if self._tick_task is not None:
            self._tick_task.cancel()
        await self.stream_monitor.stop()
        if self.spool is not None:
            await self.spool.close()
        await self.upstream.close()
        log.info(
            "shutdown complete: received=%d forwarded=%d dropped=%d spooled=%d",
            self.engine.received,
            self.engine.forwarded,
            self.engine.dropped,
            self.engine.spooled,
        )

    # -- spool ---------------------------------------------------------------------------------------
    def _spool_one(self, msg: OutMsg) -> bool:
        spool = self.spool
        if spool is None or not spool.has_room(len(msg.frame)):
            return False
        spool.append(msg.subject, msg.frame)
        return True

    @property
    def spool_mode(self) -> bool:
        """Critical messages go to disk: the upstream is down past the threshold, or the spool is not empty
        (so that critical messages keep their order behind what is already spooled)."""
        spool = self.spool
        if spool is None:
            return False
        if spool.messages:
            return True
        down_since = self.upstream.disconnected_at
        threshold = self.config.spool.upstream_down_threshold_ms / 1000
        return down_since is not None and self.clock() - down_since >= threshold

    def _spool_queued_critical(self) -> None:
        now = self.clock()
        for msg in self.engine.hand_over_critical():
            if self._spool_one(msg):
                self.engine.note_spooled(msg)
            else:
                self.engine.requeue_handed(msg, now)
        self._replay_wakeup.set()

    async def _replay_loop(self) -> None:
        """Replay the spool oldest first while the upstream is up; delete rows once a PONG confirms them."""
        spool = self.spool
        assert spool is not None
        batch_size = 500
        while True:
            await self._replay_wakeup.wait()
            self._replay_wakeup.clear()
            while spool.messages and self.upstream.can_send and not self.shutting_down:
                # Critical messages on disk go before queued lower priorities (the pump holds those, see
                # _pump), at the full rate ceiling: rate tokens first, then the rows.
                granted = self.engine.take_tokens(self.clock(), min(batch_size, spool.messages))
                if not granted:
                    await asyncio.sleep(min(0.05, max(0.001, 1 / self.engine.config.max_publish_rate)))
                    continue
                rows = await spool.read(0, granted)
                if not rows:
                    break
                now = self.clock()
                msgs = []
                for r in rows:
                    size = len(split_pub(r.frame)[3])
                    msgs.append(OutMsg(r.subject, None, CRITICAL, size, r.frame, None, now, None))
                sendable = [m for m in msgs if m.size <= self.max_payload]
                if len(sendable) < len(msgs):
                    log.error(
                        "spool: %d rows above the upstream's max_payload, dropped", len(msgs) - len(sendable)
                    )
                confirmed: asyncio.Future[bool] = self.loop.create_future()
                for msg in sendable:
                    self.upstream.write(msg.frame)
                self.upstream.confirm(lambda ok, fut=confirmed: fut.done() or fut.set_result(ok))
                if not await confirmed:
                    break  # connection lost: the rows stay, replay starts over after the reconnect
                spool.delete([r.id for r in rows], sum(len(r.frame) for r in rows))
                for msg in sendable:
                    self.engine.note_unspooled(msg)
                for msg in msgs:
                    if msg.size > self.max_payload:
                        self.engine.note_spool_dropped(msg, "max_payload")
                self.replayed += len(rows)
            self._schedule_pump()  # the hold on lower priorities ends with the spool
            if spool.messages == 0 and self.replayed:
                log.info("spool drained (%d messages replayed so far)", self.replayed)

    # -- clients -------------------------------------------------------------------------------------
    @property
    def client_auth_required(self) -> bool:
        clients = self.config.clients
        return bool(clients.token or clients.user)

    def client_authorized(self, options: dict[str, Any]) -> bool:
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

    def _outbound_limit(self) -> int:
        configured = self.config.clients.max_total_pending_bytes
        if configured is not None:
            return configured
        return int(self.engine.config.max_memory_usage_mb * 1_048_576) // 4

    def register_client(self, client: ClientConnection) -> bool:
        if self.shutting_down or len(self.clients) >= self.config.clients.max_connections:
            return False
        self.clients.add(client)
        return True

    def unregister_client(self, client: ClientConnection) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        self.flow_paused.discard(client)
        self.outbound.forget(client)
        for sub in client.subs.values():
            self.routes.pop(sub.usid, None)
            if self.subs.pop(sub.usid, None) is not None:
                self.upstream.unsubscribe(sub.usid)
        client.subs.clear()
        for sub in client.retiring:
            self.routes.pop(sub.usid, None)
            self.subs.pop(sub.usid, None)
        client.retiring.clear()

    def hold_client(self, client: ClientConnection) -> None:
        self._held_clients.append(client)

    def flow_pause(self, client: ClientConnection) -> None:
        """The upstream socket is backed up (more than `upstream.maxPendingBytes` unsent): stop reading
        this client until it drains, so that TCP pushes back on the application instead of the sidecar
        queueing what it reads message by message. Nothing is dropped. A hub that is only briefly slower
        than the application costs nothing more; one that stays backed up for `upstream.flowControlMs`
        is a stalled upstream: the applications are read again and the engine queues (and, as the queue
        fills, sheds by level) as it does while the upstream is away."""
        if self.upstream_stalled or client in self.flow_paused or client.closed:
            return
        budget = self.config.upstream.flow_control_ms / 1000
        if budget <= 0:
            self.upstream_stalled = True
            return
        self.flow_paused.add(client)
        self.flow_pauses += 1
        client.sync_reading()
        if self._flow_timer is None:
            self._flow_timer = self.loop.call_later(budget, self._flow_stall)

    def _flow_stall(self) -> None:
        self._flow_timer = None
        if not self.upstream.paused:
            self._flow_end()
            return
        if self.upstream.check_stale(suspect=True):
            return  # a frozen server, not a slow one: reconnecting (the loss ends flow control)
        self.upstream_stalled = True
        log.info(
            "upstream socket backed up for %d ms: applications are read again, the engine queues",
            self.config.upstream.flow_control_ms,
        )
        self._flow_release()

    def _flow_release(self) -> None:
        clients, self.flow_paused = self.flow_paused, set()
        for client in clients:
            client.sync_reading()

    def _flow_end(self) -> None:
        """The upstream socket drained (or the connection is gone): back to reading everyone."""
        if self._flow_timer is not None:
            self._flow_timer.cancel()
            self._flow_timer = None
        self.upstream_stalled = False
        self._flow_release()

    # -- subscriptions -------------------------------------------------------------------------------
    def subscribe(self, client: ClientConnection, op: Sub) -> None:
        if op.sid in client.subs:
            return  # nats-server ignores a SUB that reuses a live sid
        usid = next(self._usids)
        sub = ClientSub(client, op.sid, op.subject, op.queue, usid)
        client.subs[op.sid] = sub
        self.subs[usid] = sub
        self.route(sub)
        self.upstream.subscribe(usid, op.subject, op.queue)

    def route(self, sub: ClientSub) -> None:
        """Let the C router deliver this subscription's plain MSGs, or stop it (see `routes`)."""
        if route_msgs is not None and sub.client.echo and not sub.max_msgs and not sub.client.closed:
            self.routes[sub.usid] = (sub.client, sub.sid_bytes)
        else:
            self.routes.pop(sub.usid, None)

    def unsubscribe(self, client: ClientConnection, sid: str, max_msgs: int | None) -> None:
        sub = client.subs.get(sid)
        if sub is None:
            return
        if max_msgs is not None and max_msgs > sub.delivered:
            sub.max_msgs = max_msgs
            self.route(sub)  # counted one by one from now on
            if client.echo:
                # The upstream sub has counted the same deliveries, so the absolute max applies there too.
                # (Not for echo=false: the echoes the sidecar skips count upstream; it unsubscribes itself.)
                self.upstream.unsubscribe(sub.usid, max_msgs)
            return
        del client.subs[sid]
        self.upstream.unsubscribe(sub.usid)
        self._retire(sub)

    def _retire(self, sub: ClientSub) -> None:
        """Keep delivering what the upstream sent before it processed the UNSUB, as nats-server's own
        in-flight messages reach an application after its UNSUB (nats-py's drain() counts on them): the
        route goes once the PONG of a PING written after the UNSUB is back."""
        usid = sub.usid
        if not self.upstream.connected:
            self.subs.pop(usid, None)
            self.routes.pop(usid, None)
            return
        sub.closing = True
        sub.client.retiring.add(sub)
        self.upstream.confirm(lambda _ok: self._forget_retired(sub))

    def _forget_retired(self, sub: ClientSub) -> None:
        sub.client.retiring.discard(sub)
        if self.subs.get(sub.usid) is sub:
            del self.subs[sub.usid]
            self.routes.pop(sub.usid, None)

    def _forget_sub(self, sub: ClientSub) -> None:
        """Drop a subscription everywhere (the upstream refused it, or its max count was reached)."""
        client = sub.client
        if client.subs.get(sub.sid) is sub:
            del client.subs[sub.sid]
        client.retiring.discard(sub)
        if self.subs.get(sub.usid) is sub:
            del self.subs[sub.usid]
        self.routes.pop(sub.usid, None)

    @property
    def ack_prefix(self) -> str:
        """The PubAck inbox prefix (`_KPI_ACK.<server id>.`): PubAcks and the stream monitor's answers."""
        return self._ack_prefix

    @property
    def wants_ack_subscription(self) -> bool:
        """The PubAck inbox is subscribed only while a `delivery: jetstream` rule exists."""
        return any(rule.delivery is Delivery.JETSTREAM for rule in self.engine.rules)

    def sync_ack_subscription(self) -> None:
        """Subscribe or unsubscribe the PubAck inbox after the rules changed."""
        wanted = self.wants_ack_subscription
        if wanted == self._ack_subscribed:
            return
        self._ack_subscribed = wanted
        self.ack_subscription_denied = False
        if wanted:
            self.upstream.subscribe(ACK_SID, self._ack_prefix + "*", None)
        else:
            self.upstream.unsubscribe(ACK_SID)

    def resubscribe_frames(self) -> bytes:
        """SUBs (with remaining max counts) for every live subscription, sent on each (re)connect."""
        frames = bytearray()
        self._ack_subscribed = self.wants_ack_subscription
        if self._ack_subscribed:
            frames += encode_sub(self._ack_prefix + "*", None, ACK_SID)
        for usid, sub in list(self.subs.items()):
            if sub.closing:
                self._forget_retired(sub)  # its UNSUB went with the lost connection: nothing more comes
                continue
            frames += encode_sub(sub.subject, sub.queue, usid)
            if sub.max_msgs:
                # The new upstream subscription counts from zero: carry over what is left.
                sub.max_msgs -= sub.delivered
                sub.delivered = 0
                if sub.client.echo:
                    frames += encode_unsub(usid, sub.max_msgs)
        return bytes(frames)

    def _subscription_refused(self, text: str) -> None:
        """The upstream refused a SUB (permissions): answer each application that asked for it with the
        same -ERR, as nats-server would, and forget the subscription: never replayed on a reconnect, and
        never a reason to drop the shared connection (nats-server keeps it open)."""
        match = _SUB_DENIED.search(text)
        if match is None:
            log.warning("upstream refused a subscription: %s", text)
            return
        subject, queue = match.group(1), match.group(2)
        if subject == self._ack_prefix + "*":
            if not self.ack_subscription_denied:
                log.error(
                    "the upstream user may not subscribe to %s: `delivery: jetstream` messages cannot be "
                    "confirmed by PubAck (they are resent on the ack timeout, never dropped); allow "
                    "subscribe on _KPI_ACK.> for this user (%s)",
                    subject,
                    text,
                )
            self.ack_subscription_denied = True
            return
        refused = [s for s in self.subs.values() if s.subject == subject and s.queue == queue]
        for sub in refused:
            self._forget_sub(sub)
            if not sub.closing and not sub.client.closed:
                sub.client.send(encode_err(text))
        log.warning(
            "upstream refused a subscription (%d application subscriptions told): %s", len(refused), text
        )

    def local_sub_for(self, client: ClientConnection, subject: str) -> ClientSub | None:
        for sub in client.subs.values():
            if subject_matches(sub.subject, subject):
                return sub
        return None

    # -- upstream callbacks --------------------------------------------------------------------------
    def on_upstream_connected(self, info: dict[str, Any]) -> None:
        previous, self.max_payload = self.max_payload, int(info.get("max_payload", DEFAULT_MAX_PAYLOAD))
        for client in self.clients:
            client.parser.max_payload = self.max_payload
        if self.max_payload < previous:
            # Accepted under the larger limit: the upstream would close the connection on them.
            limit = self.max_payload
            too_big = self.engine.drop_queued(lambda m: m.size > limit, "max_payload")
            self._resend = deque(m for m in self._resend if m.size <= limit)
            if too_big:
                log.warning(
                    "dropped %d queued messages above the upstream's max_payload %d", len(too_big), limit
                )
        self._resend_unconfirmed()
        self._replay_wakeup.set()
        self.signal_feeds.on_connected()
        self._schedule_pump()

    def on_upstream_lost(self, unconfirmed: list[Any]) -> None:
        # Echoes of messages written on the lost connection will not come.
        for sub in self.subs.values():
            if sub.echoes:
                sub.echoes.clear()
        self._take_back(unconfirmed)
        # A PubAck can no longer arrive on this connection: resend after the reconnect.
        self._resend.extend(msg for msg, _ in self._acks.values())
        self._acks.clear()
        self.upstream.hold = False
        # The queue and the spool take what comes while the upstream is away.
        self._flow_end()

    def on_upstream_msg(self, msg: Msg) -> None:
        sub = self.subs.get(msg.sid)
        if sub is None:
            if msg.sid == ACK_SID:
                self._on_pub_ack(msg)
            return  # in flight when the application unsubscribed
        client = sub.client
        if sub.echoes and self._is_echo(sub, msg):
            return
        reply = msg.reply
        if reply is not None and not reply.startswith(ROLE_PREFIXES):
            # A custom inbox prefix: what the application publishes there is a reply (policies.roles).
            client.remember_reply(reply.decode("utf-8", "replace"), self.clock())
        client.deliver(sub, msg.subject, reply, msg.hdr_size, msg.body)
        sub.delivered += 1
        if sub.max_msgs and sub.delivered >= sub.max_msgs:
            self._forget_sub(sub)
            if not client.echo:
                self.upstream.unsubscribe(sub.usid)  # the upstream was not given the max (see unsubscribe)

    def _is_echo(self, sub: ClientSub, msg: Msg) -> bool:
        """Whether `msg` is the echo of the (echo=false) client's own message, to skip. An echo comes before
        the PONG of the first PING written after its message; older expectations are dropped (the server
        gave a queue group's message to another member). On a queue subscription the skipped message goes
        to another member of the group on this sidecar if there is one, as nats-server would pick one."""
        echoes = sub.echoes
        assert echoes is not None
        pongs = self.upstream.pongs_received
        while echoes and echoes[0][1] < pongs:
            echoes.popleft()
        if not echoes or echoes[0][0] != (msg.subject, msg.reply, msg.body):
            return False
        echoes.popleft()
        if sub.queue is not None:
            for other in self.subs.values():
                if (
                    other.client is not sub.client
                    and other.queue == sub.queue
                    and other.subject == sub.subject
                    and not other.closing
                ):
                    other.client.deliver(other, msg.subject, msg.reply, msg.hdr_size, msg.body)
                    other.delivered += 1
                    break
        return True

    def on_upstream_msgs(self, run: MsgRun) -> None:
        """A run of plain MSGs: routed in C where `routes` allows, the others one by one, in order."""
        frames = run.frames
        n = len(frames)
        routes = self.routes
        delivered: dict[int, int] = {}
        pos = route_msgs(frames, 0, routes, delivered)  # type: ignore[misc]
        while pos < n:
            msg, pos = next_msg(frames, pos)
            self.on_upstream_msg(msg)
            if pos < n:
                pos = route_msgs(frames, pos, routes, delivered)  # type: ignore[misc]
        subs = self.subs
        for usid, count in delivered.items():
            sub = subs.get(usid)
            if sub is not None:
                sub.delivered += count
                sub.client.wake()

    def _on_pub_ack(self, msg: Msg) -> None:
        token = msg.subject.decode().rpartition(".")[2]
        if token.startswith(STREAM_TOKEN):
            self.stream_monitor.on_reply(token, msg)
            return
        entry = self._acks.pop(token, None)
        if entry is None:
            return
        out, deadline = entry
        now = self.clock()
        body = msg.body[msg.hdr_size :] if msg.hdr_size > 0 else msg.body
        failed = msg.hdr_size > 0 and not body  # a status message: 503 no stream captures the subject
        if not failed:
            try:
                failed = "error" in json.loads(body)
            except ValueError:
                failed = True
        if failed:
            # Kept, never dropped: resent on the ack-timeout schedule; the breaker records the failure.
            self.engine.breaker_failure(out.subject, now)
            self._acks[token] = (out, now + self.config.spool.ack_timeout_ms / 1000)
        else:
            self.signal_feeds.on_pub_ack(now, deadline)
            self.engine.breaker_success(out.subject, now)
            self._release_ack_hold()

    @property
    def pending_acks(self) -> dict[str, tuple[OutMsg, float]]:
        """`delivery: jetstream` messages awaiting their PubAck, by token."""
        return self._acks

    def _release_ack_hold(self) -> None:
        if self.upstream.hold and len(self._acks) < self.config.spool.max_pending_acks:
            self.upstream.hold = False
            self._schedule_pump()

    def _expire_acks(self, now: float) -> None:
        expired = [token for token, (_, deadline) in self._acks.items() if deadline <= now]
        msgs = [self._acks.pop(token)[0] for token in expired]
        self._release_ack_hold()
        for msg in msgs:
            self.engine.breaker_failure(msg.subject, now)
            if self.upstream.can_send:
                self._write(msg, now)  # again, same Nats-Msg-Id: JetStream drops it if it had arrived
            else:
                self._resend.append(msg)

    def _forget_quiet_failures(self, now: float) -> None:
        # A closed breaker's failure count means "consecutive": a quiet recoveryDelayMs resets it.
        quiet = self.engine.config.recovery_delay_ms / 1000
        for subject, last in list(self._last_failure.items()):
            if now - last >= quiet:
                del self._last_failure[subject]
                if self.engine.breaker_state(subject) is CLOSED:
                    self.engine.breaker_success(subject, now)

    def on_upstream_writable(self) -> None:
        self._schedule_pump()
        self._flow_end()

    def on_upstream_error(self, text: str) -> None:
        lowered = text.lower()
        if lowered.startswith("permissions violation for publish to"):
            subject = text.rpartition(" ")[2].strip('"')
            self._publish_refused(subject, text)
            now = self.clock()
            self.engine.breaker_failure(subject, now)
            if subject not in self._last_failure:
                # Once per episode (until a quiet recoveryDelayMs), not once per refused message.
                log.warning("upstream refused a publish: %s", text)
                if len(self._last_failure) >= MAX_FAILURE_RECORDS:
                    self._last_failure.pop(next(iter(self._last_failure)))
            self._last_failure[subject] = now
        elif lowered.startswith("permissions violation for subscription to"):
            self._subscription_refused(text)
        else:
            log.warning("upstream error: %s", text)

    # -- unconfirmed writes ------------------------------------------------------------------------
    def _take_back(self, entries: list[Any]) -> None:
        """The connection died before a PONG confirmed these publishes: high and medium ones are queued
        again (resent after the reconnect: at-least-once), low ones dropped as `upstream_lost`."""
        if not entries:
            return
        now = self.clock()
        msgs: list[OutMsg] = []
        for entry in entries:
            if type(entry) is RunEntry:
                msgs.extend(self._run_messages(entry, now))
            else:
                msgs.append(entry)
        dropped = self.engine.take_back(msgs, now)
        self.upstream.journal.taken_back += len(msgs)
        for msg in dropped:
            self._refused(msg, "upstream_lost")
        log.warning(
            "%d publishes written upstream were never confirmed: %d queued again, %d dropped (upstream_lost)",
            len(msgs),
            len(msgs) - len(dropped),
            len(dropped),
        )
        self._schedule_pump()

    def _run_messages(self, entry: RunEntry, now: float) -> list[OutMsg]:
        """The messages of a run written by the fast path, one OutMsg each (only after a loss)."""
        parser = ClientParser(max_payload=-1)
        parser.headers = True  # HPUBs in a run were accepted already
        refused = dict(entry.refused) if entry.refused else None
        classify = self.engine.classify
        client = entry.client
        replies = client.replies if client is not None else None
        msgs = []
        for op in parser.feed_data(entry.frames):
            if type(op) is not Pub:
                continue
            if refused and refused.get(op.subject):
                refused[op.subject] -= 1  # the upstream refused it: settled already
                continue
            role = role_of(op.subject, op.reply is not None, replies, now)
            priority, rule = classify(op.subject, None, role < REPLY)
            msgs.append(OutMsg(op.subject, op.reply, priority, op.size, op.frame, client, now, rule, role))
        return msgs

    def _publish_refused(self, subject: str, text: str) -> None:
        """The upstream refused a publish to `subject` (permissions): find the oldest unconfirmed message
        to it, tell its application as nats-server would (`-ERR`, the connection stays open), and count
        it dropped (`permissions`) instead of forwarded. The server answers in order, and the message is
        unconfirmed until the PONG that follows the -ERR."""
        client: ClientConnection | None = None
        found = False
        journal = self.upstream.journal
        for entry in journal.entries():
            if type(entry) is RunEntry:
                refused = entry.refused or {}
                if entry.counts.get(subject, 0) > refused.get(subject, 0):
                    refused[subject] = refused.get(subject, 0) + 1
                    entry.refused = refused
                    role = subject_role(subject) or DATA
                    priority = self.engine.classify(subject, None, role < REPLY)[0]
                    self.engine.note_refused(subject, priority, role)
                    client, found = entry.client, True
                    break
            elif entry.subject == subject:
                journal.remove(entry, len(entry.frame))
                self.engine.note_refused(subject, entry.priority, entry.role)
                client, found = entry.client, True
                break
        if not found:
            for batch in self._inflight.values():
                for i, msg in enumerate(batch):
                    if msg.subject == subject:
                        del batch[i]
                        self.engine.note_refused(subject, msg.priority, msg.role)
                        client, found = msg.client, True
                        break
                if found:
                    break
        if not found:
            for token, (msg, _) in self._acks.items():
                if msg.subject == subject:
                    del self._acks[token]
                    self.engine.note_refused(subject, msg.priority, msg.role)
                    client, found = msg.client, True
                    self._release_ack_hold()
                    break
        if client is not None and not client.closed:
            client.send(encode_err(text))

    # -- publish path --------------------------------------------------------------------------------
    def publish(self, client: ClientConnection | None, op: Pub, now: float) -> bool:
        """Offer an application's PUB/HPUB to the engine. False: no room, the caller must hold it."""
        headers = op.headers if op.hdr_size > 0 else None
        header_priority = header_value(headers, "KPI-Priority") if headers is not None else None
        role = role_of(op.subject, op.reply is not None, client.replies if client is not None else None, now)
        priority, rule = self.engine.classify(op.subject, header_priority, role < REPLY)
        frame = op.frame
        if priority is CRITICAL:
            msg = self._critical_msg(
                op.subject, op.reply, op.payload, headers, frame, client, rule, now, role
            )
        else:
            msg = OutMsg(op.subject, op.reply, priority, op.size, frame, client, now, rule, role)
        return self.offer(msg, now).verdict is not BLOCK

    def publish_run(self, op: PubRun, now: float, client: ClientConnection | None = None) -> bool:
        """Consecutive publishes classified by subject alone (PubRun) forwarded as one write, when the
        engine would have forwarded each of them at once; False: the caller offers them one by one."""
        classify = self.engine.classify
        replies = client.replies if client is not None else None
        requests = op.requests
        groups: list[tuple[str, int, Priority, Role]] = []
        for subject, count in op.counts.items():
            role = subject_role(subject)
            if role is None and replies and replies.contains(subject, now):
                role = REPLY
            priority, rule = classify(subject, None, role is None)
            if priority is CRITICAL or (rule is not None and rule.batch_mode is ENVELOPE):
                return False  # critical: Msg-Id and confirmation; envelope: packed per subject
            if role is None:
                asked = requests.get(subject, 0) if requests else 0
                if asked:
                    groups.append((subject, asked, priority, REQUEST))
                    count -= asked
                    if not count:
                        continue
                role = DATA
            groups.append((subject, count, priority, role))
        upstream = self.upstream
        # can_stream, not can_send: a backed-up socket pauses the client after this read (flow_pause)
        # rather than sending its messages through the queue one by one.
        if not self.engine.forward_batch(
            groups, op.n, now, upstream.can_stream and not self.upstream_stalled
        ):
            return False
        frames = op.frames
        upstream.write(frames)
        upstream.track(RunEntry(client, frames, op.counts), len(frames))
        return True

    def _critical_msg(
        self,
        subject: str,
        reply: str | None,
        payload: bytes,
        headers: bytes | None,
        frame: bytes,
        client: ClientConnection | None,
        rule: Any,
        now: float,
        role: Role = DATA,
    ) -> OutMsg:
        """A critical message gets a Nats-Msg-Id, and a PubAck reply subject under `delivery: jetstream`."""
        token = None
        if headers is None or header_value(headers, "Nats-Msg-Id") is None:
            headers = add_header(headers, "Nats-Msg-Id", f"{self.server_id}-{next(self._msg_ids)}")
            frame = b""
        wire_reply = reply
        if reply is None and rule is not None and rule.delivery is Delivery.JETSTREAM:
            token = str(next(self._ack_tokens))
            wire_reply = self._ack_prefix + token
            frame = b""
        if not frame:
            frame = encode_pub(subject, wire_reply, payload, headers)
        size = len(payload) + len(headers or b"")
        msg = OutMsg(subject, reply, CRITICAL, size, frame, client, now, rule, role)
        msg.ack_token = token
        return msg

    def publish_message(
        self, subject: str, reply: str | None, payload: bytes, headers: bytes | None, now: float
    ) -> Decision:
        """The same path for messages that do not come from a NATS connection (HTTP ingest, load test).

        `headers` is a NATS header block (`NATS/1.0\r\n...\r\n\r\n`) or None. The caller checks subject
        validity and size against `max_payload` first. A BLOCK verdict means no room for a critical message.
        """
        header_priority = header_value(headers, "KPI-Priority") if headers is not None else None
        role = role_of(subject, reply is not None)
        priority, rule = self.engine.classify(subject, header_priority, role < REPLY)
        frame = encode_pub(subject, reply, payload, headers)
        if priority is CRITICAL:
            msg = self._critical_msg(subject, reply, payload, headers, frame, None, rule, now, role)
        else:
            size = len(payload) + (len(headers) if headers is not None else 0)
            msg = OutMsg(subject, reply, priority, size, frame, None, now, rule, role)
        return self.offer(msg, now)

    def offer(self, msg: OutMsg, now: float) -> Decision:
        if msg.size > self.max_payload:
            # Accepted under a larger limit (before the upstream's INFO, or from an earlier server): the
            # upstream would close the shared connection on it, so it never goes out.
            self.engine.note_dropped(msg, "max_payload")
            self.engine.breaker_failure(msg.subject, now)
            self._refused(msg, "max_payload")
            return TOO_BIG
        decision = self.engine.offer(msg, now, self.upstream.can_send)
        verdict = decision.verdict
        if verdict is FORWARD:
            self._write(msg, now)
        elif verdict is QUEUE:
            self._schedule_pump()
        elif verdict is DROP:
            self._refused(msg, decision.reason or "dropped")
        elif msg.priority is CRITICAL and self._spool_one(msg):
            # BLOCK: the queue is full of critical messages; disk takes it (else the caller holds it).
            self.engine.note_spooled(msg)
            self._replay_wakeup.set()
            return SPOOLED
        for evicted in decision.evicted:
            self._refused(evicted, "queue_full")
        return decision

    def _refused(self, msg: OutMsg, reason: str) -> None:
        """A request the sidecar did not forward fails fast: a 503 status message on its reply subject."""
        if msg.reply is None or msg.role >= REPLY:
            return
        refused = self.refused
        refused[reason] = refused.get(reason, 0) + 1
        client = msg.client
        if client is not None and not client.closed:
            client.send_status(msg.reply, 503, reason)

    def _write(self, msg: OutMsg, now: float) -> None:
        rule = msg.rule
        if rule is not None and rule.batch_mode is ENVELOPE and msg.reply is None and msg.priority < CRITICAL:
            self._envelope(msg)
        else:
            self.upstream.write(msg.frame)
            if msg.priority is not CRITICAL:
                self.upstream.track(msg, len(msg.frame))
        client = msg.client
        if client is not None and not client.echo:
            self._expect_echo(client, msg)
        self.engine.observe_latency(msg.subject, now - msg.received_at, msg.role)
        if msg.ack_token is not None:
            acks = self._acks
            acks[msg.ack_token] = (msg, now + self.config.spool.ack_timeout_ms / 1000)
            if len(acks) >= self.config.spool.max_pending_acks:
                self.upstream.hold = True  # the queue holds the rest until PubAcks come back
            return
        if self.engine.has_breakers and self.engine.breaker_state(msg.subject) is HALF_OPEN:
            self._note_trial(msg.subject)
        if msg.priority is CRITICAL:
            self._await_confirmation(msg)

    def _await_confirmation(self, msg: OutMsg) -> None:
        """Keep a critical message until the PONG of a PING written after it comes back.

        Messages join the open batch only while its PING has not been written yet (a PONG confirms only
        what went out before its PING); then a new batch and a new PING.
        """
        upstream = self.upstream
        batch = self._unconfirmed_batch
        if batch and self._batch_ping == upstream.pings_written:
            batch.append(msg)
            return
        batch_id = next(self._batch_ids)
        self._unconfirmed_batch = self._inflight[batch_id] = [msg]
        self._batch_ping = upstream.pings_written
        upstream.confirm(lambda ok: self._confirmed(batch_id, ok))

    def _envelope(self, msg: OutMsg) -> None:
        """Hold a `batchMode: envelope` message: this iteration's messages of a subject go as one."""
        pending = self._envelopes.get(msg.subject)
        if pending is None:
            pending = self._envelopes[msg.subject] = []
            if len(self._envelopes) == 1:
                self.loop.call_soon(self._flush_envelopes)
        pending.append(msg)

    def _flush_envelopes(self) -> None:
        envelopes, self._envelopes = self._envelopes, {}
        if not self.upstream.connected:
            # Lost since they were handed over: queued again (or dropped) like unconfirmed writes.
            self._take_back([msg for msgs in envelopes.values() for msg in msgs])
            return
        limit = self.max_payload
        for subject, msgs in envelopes.items():
            records: list[tuple[bytes | None, bytes]] = []
            packed: list[OutMsg] = []
            size = 0
            for msg in msgs:
                record = record_of(msg.frame)
                record_size = len(record[0] or b"") + len(record[1]) + RECORD_OVERHEAD
                if records and size + record_size + ENVELOPE_HEADER_ROOM > limit:
                    self._write_envelope(subject, packed, records)
                    records, packed, size = [], [], 0
                records.append(record)
                packed.append(msg)
                size += record_size
            self._write_envelope(subject, packed, records)

    def _write_envelope(
        self, subject: str, msgs: list[OutMsg], records: list[tuple[bytes | None, bytes]]
    ) -> None:
        frame = encode_pub(subject, None, pack(records), envelope_headers(len(records)))
        upstream = self.upstream
        upstream.write(frame)
        # Taken back one by one if the connection dies unconfirmed (the bytes are shared by the envelope).
        share = len(frame) // len(msgs)
        for msg in msgs:
            upstream.track(msg, share)

    def _note_trial(self, subject: str) -> None:
        """A half-open breaker's trial message: it succeeded if the PONG after it comes back first.

        Core NATS has no ack, but the server answers in order: a permissions -ERR for the trial arrives
        before the PONG of a PING written after it (and reopens the breaker, so the success is ignored).
        """
        upstream = self.upstream
        if self._trial_subjects and self._trial_ping == upstream.pings_written:
            self._trial_subjects.add(subject)
            return
        trials = self._trial_subjects = {subject}
        self._trial_ping = upstream.pings_written

        def confirmed(ok: bool) -> None:
            if ok:
                now = self.clock()
                for trial in trials:
                    self.engine.breaker_success(trial, now)

        upstream.confirm(confirmed)

    def _expect_echo(self, client: ClientConnection, msg: OutMsg) -> None:
        """The upstream will echo this message to the client's matching subs: remember it to skip it there.

        One shared upstream connection cannot ask the server not to echo one application's messages, so
        the sidecar drops the echo itself. Messages from one connection reach a subscription in order,
        so the echo is the next identical message on that sub (a byte-identical message from someone else
        is indistinguishable to the application anyway). Queue subscriptions are filtered too (see
        `_is_echo`).
        """
        subs = [s for s in client.subs.values() if subject_matches(s.subject, msg.subject)]
        if not subs:
            return
        subject, reply, _, body = split_pub(msg.frame)
        entry = ((subject, reply, body), self.upstream.pings_written)
        for sub in subs:
            if sub.echoes is None:
                sub.echoes = deque(maxlen=MAX_PENDING_ECHOES)
            sub.echoes.append(entry)

    def _confirmed(self, batch_id: int, ok: bool) -> None:
        batch = self._inflight.pop(batch_id, [])
        if batch is self._unconfirmed_batch:
            self._unconfirmed_batch = []
        if not ok:
            # Written but never confirmed: the server may not have it. Resend after the reconnect; the
            # Nats-Msg-Id lets JetStream drop the duplicate if it did.
            self._resend.extend(batch)

    def _resend_unconfirmed(self) -> None:
        if not self._resend or not self.upstream.can_send:
            return
        now = self.clock()
        resend, self._resend = self._resend, deque()
        for msg in resend:
            self._write(msg, now)

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _log_transitions(self) -> None:
        for transition in self.engine.pop_transitions():
            log.warning(
                "degradation level %s -> %s (load %.0f%%, dominant signal %s)",
                transition.from_level.label,
                transition.to_level.label,
                transition.load_percent,
                transition.dominant_signal,
            )

    def after_ingest(self) -> None:
        """Called after each batch of application input: release queued work that is due."""
        if self.engine.has_transitions:
            self._log_transitions()  # the level moved between ticks (a burst)
        if self.engine.queue_size:
            if self.spool is not None and self.engine.critical_queued() and self.spool_mode:
                self._spool_queued_critical()
            self._schedule_pump()

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._pump_timer is not None:
            self._pump_timer.cancel()
            self._pump_timer = None
        now = self.clock()
        upstream = self.upstream
        spool = self.spool
        # While critical messages wait on disk, only critical ones (and replies) leave the queue.
        self.engine.hold_below_critical = spool is not None and spool.messages > 0 and not self.shutting_down
        if upstream.can_send:
            self._resend_unconfirmed()
            # In slices, so that a paused upstream stops the release instead of buffering megabytes.
            while upstream.can_send:
                msgs = self.engine.take(now, PUMP_SLICE)
                for msg in msgs:
                    self._write(msg, now)
                if len(msgs) < PUMP_SLICE:
                    break
        self._resume_held()
        deadline = self.engine.next_deadline()
        if deadline is not None and self.upstream.can_send:
            self._pump_timer = self.loop.call_later(max(deadline - now, 0.0005), self._pump)

    def _resume_held(self) -> None:
        while self._held_clients:
            client = self._held_clients[0]
            if client.closed or client.resume():
                self._held_clients.popleft()
            else:
                break

    def drain_now(self) -> int:
        """Forward everything queued now, ignoring batching delay and the rate ceiling (admin action)."""
        now = self.clock()
        if not self.upstream.can_send:
            return 0
        msgs = self.engine.drain(now)
        for msg in msgs:
            self._write(msg, now)
        return len(msgs)

    def clear_queue(self) -> int:
        """Discard non-critical queued messages (admin action), counted as reason="cleared"."""
        return len(self.engine.clear())

    # -- periodic work -------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        client_ping_every = self.config.clients.ping_interval_ms / 1000
        next_client_ping = self.clock() + client_ping_every
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            self.tick()
            if self.clock() >= next_client_ping:
                next_client_ping = self.clock() + client_ping_every
                for client in list(self.clients):
                    client.ping()

    def tick(self) -> None:
        """Sample the signals, let the engine re-evaluate its level, and release due work."""
        now = self.clock()
        sample = self.resources.sample()
        self.engine.tick(
            now,
            memory_mb=sample.memory_mb,
            cpu_percent=sample.cpu_percent,
            cpu_quota_cores=sample.cpu_quota_cores,
            **self.signal_feeds.tick_args(now),
        )
        self._log_transitions()
        log_class_transitions(self)
        if self.outbound.total:
            self.outbound.recount()
        if self._acks:
            self._expire_acks(now)
        if self._last_failure:
            self._forget_quiet_failures(now)
        if self.spool is not None:
            if self.engine.critical_queued() and self.spool_mode:
                self._spool_queued_critical()
            if self.spool.messages:
                self._replay_wakeup.set()
        for listener in self.tick_listeners:
            listener(now)
        self._schedule_pump()
