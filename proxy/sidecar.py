"""The running sidecar: owns the engine, the upstream, the application connections and the timers."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import random
import secrets
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from policies.config import Priority
from policies.engine import Decision, Engine, Verdict
from policies.subjects import subject_matches
from proxy import __version__
from proxy.client import ClientConnection, ClientSub
from proxy.config import SidecarConfig
from proxy.nats_protocol import (
    DEFAULT_MAX_PAYLOAD,
    Msg,
    Pub,
    Sub,
    add_header,
    encode_pub,
    encode_sub,
    encode_unsub,
    header_value,
)
from proxy.resources import ResourceMonitor
from proxy.upstream import Upstream

log = logging.getLogger(__name__)

CRITICAL = Priority.CRITICAL
FORWARD = Verdict.FORWARD
QUEUE = Verdict.QUEUE
DROP = Verdict.DROP
BLOCK = Verdict.BLOCK
TICK_INTERVAL_S = 1.0


class OutMsg:
    """A message on its way upstream: the engine's queue item."""

    __slots__ = (
        "client",
        "frame",
        "is_request",
        "priority",
        "received_at",
        "reply",
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
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.is_request = reply is not None
        self.priority = priority
        self.size = size
        self.frame = frame
        self.client = client
        self.received_at = received_at
        self.rule = rule


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Sidecar:
    """Everything that runs: servers, upstream, engine, timers. Built from a validated SidecarConfig."""

    def __init__(self, config: SidecarConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.server_id = "KPI" + secrets.token_hex(12).upper()
        self.engine = Engine(
            config.backpressure,
            config.policies,
            rng=rng or random.Random(),
            now=self.loop.time(),
            max_subjects=config.metrics.max_subjects,
        )
        self.upstream = Upstream(config.upstream, self)
        self.resources = ResourceMonitor()
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.clients: set[ClientConnection] = set()
        self.subs: dict[int, ClientSub] = {}
        self.slow_consumers = 0
        self.total_connections = 0
        self.started_at = self.loop.time()
        self.shutting_down = False
        self.nats_port: int | None = None
        self.bound_ports: dict[str, int | None] = {}
        self._client_ids = itertools.count(1)
        self._usids = itertools.count(1)
        self._msg_ids = itertools.count(1)
        self._servers: list[asyncio.AbstractServer] = []
        self._pump_scheduled = False
        self._pump_timer: asyncio.TimerHandle | None = None
        self._pump_deadline: float | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._held_clients: deque[ClientConnection] = deque()
        # Critical messages written upstream and not yet confirmed by a PONG, and those to resend.
        self._unconfirmed_batch: list[OutMsg] = []
        self._resend: deque[OutMsg] = deque()
        self._confirm_inflight = 0
        self.last_transition: Any = None
        # Called with `now` after every tick (history ring, load test bookkeeping).
        self.tick_listeners: list[Callable[[float], None]] = []

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the upstream connection, the NATS listener and the timers."""
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
        log.info("NATS port listening on %s:%s", host, self.nats_port)

    async def shutdown(self) -> None:
        """Stop accepting, forward what can be forwarded within the grace, then close everything."""
        if self.shutting_down:
            return
        self.shutting_down = True
        grace = self.config.shutdown.grace_ms / 1000
        deadline = self.loop.time() + grace
        log.info("shutting down: draining for up to %.1fs", grace)
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.pause_reading()
        # Forward everything the upstream can take before the grace ends.
        while self.loop.time() < deadline - 0.2:
            if self.upstream.can_send:
                self._resend_unconfirmed()
                now = self.loop.time()
                for msg in self.engine.drain(now):
                    self._write(msg, now)
                self.upstream.flush()
            if self.engine.queue_size == 0 and not self._resend and not self._unconfirmed_pending():
                break
            await asyncio.sleep(0.05)
        left = self.engine.drain_all_for_shutdown()
        if left:
            log.warning("shutdown: %d queued messages could not be forwarded in time", len(left))
        for msg in left:
            self.engine.note_dropped(msg, "shutdown")
        for client in list(self.clients):
            client.close()
        if self._tick_task is not None:
            self._tick_task.cancel()
        await self.upstream.close()
        log.info(
            "shutdown complete: received=%d forwarded=%d dropped=%d",
            self.engine.received,
            self.engine.forwarded,
            self.engine.dropped,
        )

    def _unconfirmed_pending(self) -> bool:
        return self._confirm_inflight > 0

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

    def register_client(self, client: ClientConnection) -> bool:
        if self.shutting_down or len(self.clients) >= self.config.clients.max_connections:
            return False
        self.clients.add(client)
        self.total_connections += 1
        return True

    def unregister_client(self, client: ClientConnection) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        for sub in client.subs.values():
            if self.subs.pop(sub.usid, None) is not None:
                self.upstream.unsubscribe(sub.usid)
        client.subs.clear()

    def hold_client(self, client: ClientConnection) -> None:
        self._held_clients.append(client)

    # -- subscriptions -------------------------------------------------------------------------------
    def subscribe(self, client: ClientConnection, op: Sub) -> None:
        if op.sid in client.subs:
            return  # nats-server ignores a SUB that reuses a live sid
        usid = next(self._usids)
        sub = ClientSub(client, op.sid, op.subject, op.queue, usid)
        client.subs[op.sid] = sub
        self.subs[usid] = sub
        self.upstream.subscribe(usid, op.subject, op.queue)

    def unsubscribe(self, client: ClientConnection, sid: str, max_msgs: int | None) -> None:
        sub = client.subs.get(sid)
        if sub is None:
            return
        if max_msgs is not None and max_msgs > sub.delivered:
            sub.max_msgs = max_msgs
            # The upstream sub has counted the same deliveries, so the absolute max applies there too.
            self.upstream.unsubscribe(sub.usid, max_msgs)
            return
        del client.subs[sid]
        self.subs.pop(sub.usid, None)
        self.upstream.unsubscribe(sub.usid)

    def resubscribe_frames(self) -> bytes:
        """SUBs (with remaining max counts) for every live subscription, sent on each (re)connect."""
        frames = bytearray()
        for usid, sub in self.subs.items():
            frames += encode_sub(sub.subject, sub.queue, usid)
            if sub.max_msgs:
                # The new upstream subscription counts from zero: carry over what is left.
                sub.max_msgs -= sub.delivered
                sub.delivered = 0
                frames += encode_unsub(usid, sub.max_msgs)
        return bytes(frames)

    def local_sub_for(self, client: ClientConnection, subject: str) -> ClientSub | None:
        for sub in client.subs.values():
            if subject_matches(sub.subject, subject):
                return sub
        return None

    # -- upstream callbacks --------------------------------------------------------------------------
    def on_upstream_connected(self, info: dict[str, Any]) -> None:
        self.max_payload = int(info.get("max_payload", DEFAULT_MAX_PAYLOAD))
        for client in self.clients:
            client.parser.max_payload = self.max_payload
        self._resend_unconfirmed()
        self._schedule_pump()

    def on_upstream_lost(self) -> None:
        pass

    def on_upstream_msg(self, msg: Msg) -> None:
        sub = self.subs.get(msg.sid)
        if sub is None:
            return  # in flight when the application unsubscribed
        client = sub.client
        client.deliver(sub, msg.subject, msg.reply, msg.hdr_size, msg.body)
        sub.delivered += 1
        if sub.max_msgs and sub.delivered >= sub.max_msgs:
            client.subs.pop(sub.sid, None)
            del self.subs[msg.sid]

    def on_upstream_batch_end(self) -> None:
        pass

    def on_upstream_writable(self) -> None:
        self._schedule_pump()

    def on_upstream_error(self, text: str) -> None:
        lowered = text.lower()
        if lowered.startswith("permissions violation for publish to"):
            subject = text.rpartition(" ")[2].strip('"')
            self.engine.breaker_failure(subject, self.loop.time())
            log.warning("upstream refused a publish: %s", text)
        elif lowered.startswith("permissions violation for subscription to"):
            subject = text.rpartition(" ")[2].strip('"')
            for sub in list(self.subs.values()):
                if sub.subject == subject:
                    sub.client.send(f"-ERR '{text}'\r\n".encode())
            log.warning("upstream refused a subscription: %s", text)
        else:
            log.warning("upstream error: %s", text)

    # -- publish path --------------------------------------------------------------------------------
    def publish(self, client: ClientConnection | None, op: Pub, now: float) -> bool:
        """Offer an application's PUB/HPUB to the engine. False: no room, the caller must hold it."""
        headers = op.headers if op.hdr_size > 0 else None
        header_priority = header_value(headers, "KPI-Priority") if headers is not None else None
        priority, rule = self.engine.classify(op.subject, header_priority)
        frame = op.frame
        if priority is CRITICAL:
            frame = self._with_msg_id(op.subject, op.reply, headers, op.payload, frame)
        msg = OutMsg(op.subject, op.reply, priority, op.size, frame, client, now, rule)
        return self.offer(msg, now).verdict is not BLOCK

    def publish_message(
        self, subject: str, reply: str | None, payload: bytes, headers: bytes | None, now: float
    ) -> Decision:
        """The same path for messages that do not come from a NATS connection (HTTP ingest, load test).

        `headers` is a NATS header block (`NATS/1.0\r\n...\r\n\r\n`) or None. The caller checks subject
        validity and size against `max_payload` first. A BLOCK verdict means no room for a critical message.
        """
        header_priority = header_value(headers, "KPI-Priority") if headers is not None else None
        priority, rule = self.engine.classify(subject, header_priority)
        frame = encode_pub(subject, reply, payload, headers)
        if priority is CRITICAL:
            frame = self._with_msg_id(subject, reply, headers, payload, frame)
        size = len(payload) + (len(headers) if headers is not None else 0)
        msg = OutMsg(subject, reply, priority, size, frame, None, now, rule)
        return self.offer(msg, now)

    def offer(self, msg: OutMsg, now: float) -> Decision:
        decision = self.engine.offer(msg, now, self.upstream.can_send)
        verdict = decision.verdict
        if verdict is FORWARD:
            self._write(msg, now)
        elif verdict is QUEUE:
            self._schedule_pump()
        elif verdict is DROP:
            self._refused(msg, decision.reason or "dropped")
        for evicted in decision.evicted:
            self._refused(evicted, "queue_full")
        return decision

    def _with_msg_id(
        self, subject: str, reply: str | None, headers: bytes | None, payload: bytes, frame: bytes
    ) -> bytes:
        if headers is not None and header_value(headers, "Nats-Msg-Id") is not None:
            return frame
        msg_id = f"{self.server_id}-{next(self._msg_ids)}"
        return encode_pub(subject, reply, payload, add_header(headers, "Nats-Msg-Id", msg_id))

    def _refused(self, msg: OutMsg, reason: str) -> None:
        client = msg.client
        if msg.reply is not None and client is not None and not client.closed:
            client.send_status(msg.reply, 503, reason)

    def _write(self, msg: OutMsg, now: float) -> None:
        self.upstream.write(msg.frame)
        self.engine.observe_latency(msg.subject, now - msg.received_at)
        if msg.priority is CRITICAL:
            if not self._unconfirmed_batch:
                self._confirm_inflight += 1
                batch = self._unconfirmed_batch
                self.upstream.confirm(lambda ok: self._confirmed(batch, ok))
            self._unconfirmed_batch.append(msg)

    def _confirmed(self, batch: list[OutMsg], ok: bool) -> None:
        self._confirm_inflight -= 1
        if batch is self._unconfirmed_batch:
            self._unconfirmed_batch = []
        if not ok:
            # Written but never confirmed: the server may not have it. Resend after the reconnect; the
            # Nats-Msg-Id lets JetStream drop the duplicate if it did.
            self._resend.extend(batch)

    def _resend_unconfirmed(self) -> None:
        if not self._resend or not self.upstream.can_send:
            return
        now = self.loop.time()
        resend, self._resend = self._resend, deque()
        for msg in resend:
            self._write(msg, now)

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def after_ingest(self) -> None:
        """Called after each batch of application input: release queued work that is due."""
        if self.engine.queue_size:
            self._schedule_pump()

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._pump_timer is not None:
            self._pump_timer.cancel()
            self._pump_timer = None
        now = self.loop.time()
        if self.upstream.can_send:
            self._resend_unconfirmed()
            for msg in self.engine.take(now):
                self._write(msg, now)
        self._resume_held()
        deadline = self.engine.next_deadline()
        if deadline is not None and self.upstream.can_send:
            self._pump_timer = self.loop.call_at(max(deadline, now + 0.0005), self._pump)

    def _resume_held(self) -> None:
        while self._held_clients:
            client = self._held_clients[0]
            if client.closed or client.resume():
                self._held_clients.popleft()
            else:
                break

    def drain_now(self) -> int:
        """Forward everything queued now, ignoring batching delay and the rate ceiling (admin action)."""
        now = self.loop.time()
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
        next_client_ping = self.loop.time() + client_ping_every
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            self.tick()
            if self.loop.time() >= next_client_ping:
                next_client_ping = self.loop.time() + client_ping_every
                for client in list(self.clients):
                    client.ping()

    def tick(self) -> None:
        """Sample the signals, let the engine re-evaluate its level, and release due work."""
        now = self.loop.time()
        sample = self.resources.sample()
        transition = self.engine.tick(
            now,
            memory_mb=sample.memory_mb,
            cpu_percent=sample.cpu_percent,
            cpu_quota_cores=sample.cpu_quota_cores,
        )
        if transition is not None:
            self.last_transition = transition
            log.warning(
                "degradation level %s -> %s (load %.0f%%, dominant signal %s)",
                transition.from_level.label,
                transition.to_level.label,
                transition.load_percent,
                transition.dominant_signal,
            )
        for listener in self.tick_listeners:
            listener(now)
        self._schedule_pump()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for tests and `make run`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
