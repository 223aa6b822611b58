"""The running sidecar: the composition root that builds the collaborators and wires them together.

One job: own the lifecycle (start, the shutdown drain, the tick) and connect the rooms of the shell,
as aiohttp's `Application` wires handlers and `cleanup_ctx` resources. The work happens elsewhere:

- `proxy.ports.listener.NatsListener`: the NATS port, the client registry and auth (the `ClientHost`
  each `proxy.ports.nats_port.ClientConnection` talks to);
- `proxy.pipeline.publish.Publisher`: classify, offer, write, pump, envelopes, refusals, take-back;
- `proxy.pipeline.deliveries.Deliveries`: subscriptions (merged interest), routing of upstream messages,
  echo suppression;
- `proxy.pipeline.confirmations.Confirmations`: the PING barrier, PubAcks, breaker trials;
- `proxy.pipeline.refusals.RefusedPublishes`: publishes the upstream refused (permissions);
- `proxy.pipeline.flow.FlowControl`: paused and held clients;
- `proxy.pipeline.delivery_flow.DeliveryFlow`: the upstream not read while applications are behind;
- `proxy.pipeline.spool_bridge.SpoolBridge`: spool mode and the replay loop;
- `proxy.upstream.connection.Upstream`, whose `UpstreamHandler` the sidecar is (each event is passed on
  to the collaborators it concerns).

The admin API reads the collaborators through the thin attributes kept here (`publisher`, `deliveries`,
`confirmations`, `flow`, `listener`, `spool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies.config import Priority
from policies.engine import Engine
from policies.fleet import FleetConfig
from proxy.config.schema import SidecarConfig
from proxy.fleet.member import FleetMember
from proxy.nats.protocol import DEFAULT_MAX_PAYLOAD, Msg, MsgRun
from proxy.pipeline.confirmations import Confirmations
from proxy.pipeline.deliveries import Deliveries
from proxy.pipeline.delivery_flow import DeliveryFlow
from proxy.pipeline.flow import FlowControl
from proxy.pipeline.publish import Publisher
from proxy.pipeline.refusals import RefusedPublishes
from proxy.pipeline.resources import ResourceMonitor
from proxy.pipeline.signal_feeds import SignalFeeds, log_class_transitions
from proxy.pipeline.spool import Spool
from proxy.pipeline.spool_bridge import SpoolBridge
from proxy.pipeline.stream_monitor import TOKEN_PREFIX as STREAM_TOKEN
from proxy.pipeline.stream_monitor import StreamMonitor
from proxy.ports.listener import NatsListener
from proxy.upstream.connection import Upstream

log = logging.getLogger(__name__)

CRITICAL = Priority.CRITICAL
TICK_INTERVAL_S = 1.0


class Sidecar:
    """Everything that runs: servers, upstream, engine, timers. Built from a validated SidecarConfig."""

    # UpstreamHandler members bound straight to Deliveries in __init__ (no extra call per message).
    on_upstream_msg: Callable[[Msg], None]
    on_upstream_msgs: Callable[[MsgRun], None]

    def __init__(self, config: SidecarConfig, *, rng: random.Random | None = None) -> None:
        self._config = config
        self.loop = loop = asyncio.get_running_loop()
        # The shell's one clock, read once per batch of work and passed to the engine: time.monotonic, not
        # loop.time(), which uvloop moves in whole milliseconds (latencies need better).
        self.clock = clock = time.monotonic
        self.server_id = "KPI" + secrets.token_hex(12).upper()
        self.engine = engine = Engine(
            config.backpressure,
            config.policies,
            rng=rng or random.Random(),
            now=self.clock(),
            max_subjects=config.metrics.max_subjects,
        )
        self.upstream = upstream = Upstream(config.upstream, self)
        self.resources = ResourceMonitor()
        spool_cfg = config.spool
        self.spool: Spool | None = (
            Spool(Path(spool_cfg.path), spool_cfg.max_bytes) if spool_cfg.path is not None else None
        )
        self.started_at = self.clock()
        self.shutting_down = False
        self.bound_ports: dict[str, int | None] = {}
        self._tick_task: asyncio.Task[None] | None = None
        # Called with `now` after every tick (history ring, load test bookkeeping).
        self.tick_listeners: list[Callable[[float], None]] = []

        # The collaborators, then the callbacks between them (none imports another's owner).
        self.confirmations = Confirmations(config, engine, upstream, clock, self.server_id)
        self.refusals = RefusedPublishes(engine, upstream, self.confirmations, clock)
        self.deliveries = Deliveries(upstream, clock, self.confirmations, lambda: self.config.clients)
        self.flow = FlowControl(config, loop, upstream)
        self.spool_bridge = SpoolBridge(config, engine, upstream, self.spool, loop, clock)
        self.publisher = Publisher(
            config,
            engine,
            upstream,
            loop,
            clock,
            self.server_id,
            confirmations=self.confirmations,
            deliveries=self.deliveries,
            flow=self.flow,
            spool_bridge=self.spool_bridge,
        )
        self.listener = NatsListener(
            config,
            engine,
            upstream,
            loop,
            clock,
            self.server_id,
            publisher=self.publisher,
            deliveries=self.deliveries,
            flow=self.flow,
        )
        self.delivery_flow = DeliveryFlow(
            loop,
            upstream,
            self.listener.outbound,
            lambda: self.config.clients.max_pending_bytes,
            lambda: len(self.listener.clients),
        )
        self.listener.outbound.on_pending = self.delivery_flow.on_pending
        self.deliveries.flow = self.delivery_flow
        self.on_upstream_msg = self.deliveries.on_upstream_msg
        self.on_upstream_msgs = self.deliveries.on_upstream_msgs
        publisher = self.publisher
        self.confirmations.write = publisher.write
        self.confirmations.schedule_pump = publisher.schedule_pump
        self.spool_bridge.max_payload = lambda: publisher.max_payload
        self.spool_bridge.schedule_pump = publisher.schedule_pump
        for part in (publisher, self.spool_bridge, self.listener):
            part.shutting_down = lambda: self.shutting_down
        # Fleet membership over JetStream KV (proxy/fleet): control traffic on sids of its own.
        self.fleet: FleetMember | None = None
        if config.fleet is not None:
            self.fleet = FleetMember(self, config.fleet, self.deliveries.reserve(3))
            self.deliveries.own.update(dict.fromkeys(self.fleet.sids, self.fleet.on_msg))
        # Signals (#16): RTT and PubAck latency, spool trend; the fill of the streams jetstream rules feed.
        self.signal_feeds = SignalFeeds(self)
        self.stream_monitor = StreamMonitor(self)
        self.confirmations.on_acked = self.signal_feeds.on_pub_ack
        self.confirmations.other_replies[STREAM_TOKEN] = self.stream_monitor.on_reply

    # -- state the admin API and the ingest ports read -----------------------------------------------
    @property
    def config(self) -> SidecarConfig:
        """The running configuration (replaced by a reload or an admin change)."""
        return self._config

    @config.setter
    def config(self, config: SidecarConfig) -> None:
        """A reload or an admin change: every collaborator reads the new configuration from now on."""
        self._config = config
        for part in (self.confirmations, self.flow, self.spool_bridge, self.publisher, self.listener):
            part.config = config

    @property
    def fleet_config(self) -> FleetConfig | None:
        """The `fleet:` section in force (reloadable parts included)."""
        return self._config.fleet

    @property
    def spooled_messages(self) -> int:
        """Messages waiting in the spool (0 without one)."""
        return self.spool.messages if self.spool is not None else 0

    @property
    def ack_prefix(self) -> str:
        """The PubAck inbox prefix (`_KPI_ACK.<server id>.`): PubAcks and the stream monitor's answers."""
        return self.confirmations.ack_prefix

    @property
    def ack_subscription_denied(self) -> bool:
        """Whether the upstream refused the PubAck inbox subscription."""
        return self.confirmations.ack_subscription_denied

    @property
    def max_payload(self) -> int:
        """The upstream's max_payload (from its INFO; the NATS default before the first connect)."""
        return self.publisher.max_payload

    @property
    def nats_port(self) -> int | None:
        """The NATS port bound (None before start)."""
        return self.listener.nats_port

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the spool, start the upstream connection, the NATS listener and the timers."""
        await self.spool_bridge.start()
        self.upstream.start()
        # Give the upstream one connect timeout so that applications connecting at startup find interest
        # registered when their flush returns; past that, start anyway (publishes queue meanwhile).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.upstream.connect_timeout_ms / 1000):
                await self.upstream.wait_connected()
        await self.listener.start()
        self._tick_task = self.loop.create_task(self._tick_loop(), name="tick")
        if self.fleet is not None:
            self.fleet.start()
        self.stream_monitor.start()

    async def shutdown(self) -> None:
        """Stop accepting, forward what can be forwarded within the grace, spool the critical rest."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.delivery_flow.close()
        grace = self.config.shutdown.grace_ms / 1000
        deadline = self.clock() + grace
        log.info("shutting down: draining for up to %.1fs", grace)
        self.listener.stop_accepting()
        engine, upstream, publisher = self.engine, self.upstream, self.publisher
        confirmations, bridge, spool = self.confirmations, self.spool_bridge, self.spool
        # Forward everything the upstream can take, keeping a margin of the grace to write the rest to disk.
        margin = min(2.0, grace / 4)
        while self.clock() < deadline - margin:
            if upstream.can_send:
                confirmations.resend_unconfirmed()
                now = self.clock()
                for msg in engine.drain(now):
                    publisher.write(msg, now)
            if upstream.journal.nbytes:
                upstream.request_ping()  # its PONG confirms the non-critical publishes written
            upstream.flush()
            settled = (
                engine.queue_size == 0
                and confirmations.settled
                and not (upstream.journal.nbytes and upstream.connected)
            )
            if settled and (spool is None or spool.messages == 0 or not upstream.can_send):
                break
            await asyncio.sleep(0.02)
        bridge.stop_replay()
        # Written and never confirmed: the upstream may not have them; counted like what is still queued.
        publisher.take_back(upstream.journal.take_all())
        spooled = dropped = 0
        for msg in engine.drain_all_for_shutdown():
            if msg.priority is CRITICAL and bridge.spool_one(msg):
                engine.note_spooled(msg)
                spooled += 1
            else:
                engine.note_dropped(msg, "shutdown")
                dropped += 1
        # Written but never confirmed: on disk too (JetStream's duplicate window removes a resend).
        for msg in confirmations.unconfirmed():
            if bridge.spool_one(msg):
                spooled += 1
        if spooled or dropped:
            log.warning("shutdown: %d critical messages spooled, %d messages dropped", spooled, dropped)
        self.listener.close_all()
        if self._tick_task is not None:
            self._tick_task.cancel()
        await self.stream_monitor.stop()
        await bridge.close()
        if self.fleet is not None:
            await self.fleet.stop()  # deletes its key: the others' shares grow at once
        await upstream.close()
        log.info(
            "shutdown complete: received=%d forwarded=%d dropped=%d spooled=%d",
            engine.received,
            engine.forwarded,
            engine.dropped,
            engine.spooled,
        )

    # -- upstream events (the UpstreamHandler) -------------------------------------------------------
    def on_upstream_connected(self, info: dict[str, Any]) -> None:
        publisher = self.publisher
        previous = publisher.max_payload
        publisher.max_payload = limit = int(info.get("max_payload", DEFAULT_MAX_PAYLOAD))
        self.listener.set_max_payload(limit)
        if limit < previous:
            # Accepted under the larger limit: the upstream would close the connection on them.
            too_big = self.engine.drop_queued(lambda m: m.size > limit, "max_payload")
            self.confirmations.drop_resend_above(limit)
            if too_big:
                log.warning(
                    "dropped %d queued messages above the upstream's max_payload %d", len(too_big), limit
                )
        self.confirmations.resend_unconfirmed()
        self.spool_bridge.wake()
        self.signal_feeds.on_connected()
        publisher.schedule_pump()
        if self.fleet is not None:
            self.fleet.on_connected()

    def on_upstream_lost(self, unconfirmed: list[Any]) -> None:
        # Echoes of messages written on the lost connection will not come.
        self.deliveries.clear_echoes()
        self.publisher.take_back(unconfirmed)
        self.confirmations.on_upstream_lost()
        # The queue and the spool take what comes while the upstream is away.
        self.flow.end()
        if self.fleet is not None:
            self.fleet.on_lost()

    def on_upstream_writable(self) -> None:
        self.publisher.schedule_pump()
        self.flow.end()

    def on_upstream_error(self, text: str) -> None:
        lowered = text.lower()
        if lowered.startswith("permissions violation for publish to"):
            self.refusals.on_publish_refused(text)
        elif lowered.startswith("permissions violation for subscription to"):
            self.deliveries.subscription_refused(text)
        else:
            log.warning("upstream error: %s", text)

    def resubscribe_frames(self) -> bytes:
        """Every live subscription's SUB, for the handshake of a (re)connect."""
        frames = self.deliveries.resubscribe_frames()
        return frames + self.fleet.subscribe_frames() if self.fleet is not None else frames

    # -- periodic work -------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        client_ping_every = self.config.clients.ping_interval_ms / 1000
        next_client_ping = self.clock() + client_ping_every
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            self.tick()
            if self.clock() >= next_client_ping:
                next_client_ping = self.clock() + client_ping_every
                self.listener.ping_all()

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
        self.publisher.log_transitions()
        log_class_transitions(self)
        outbound = self.listener.outbound
        if outbound.total:
            outbound.recount()
        self.confirmations.tick(now)
        self.refusals.tick(now)
        self.spool_bridge.tick()
        for listener in self.tick_listeners:
            listener(now)
        self.publisher.schedule_pump()
