"""The publish path: from an application's PUB (or an HTTP ingest item) to bytes on the upstream socket.

One job: classify a publish (role, then priority and rule), offer it to the engine, and act on the
verdict: write it (alone, as a `batchMode: envelope` per subject, or a whole PubRun at once on the fast
path), queue it and pump the queue as the engine allows, spool it (critical, no room) or refuse it
(a request refused gets a 503 status on its reply subject). Also the admin actions on the queue
(`drain_now`, `clear_queue`) and the take-back of writes a lost connection never confirmed.
Collaborators: the `Engine` (decisions), the `Upstream` (writes, journal), `Confirmations` (PING
barrier, PubAcks, breaker trials), `Deliveries` (echo suppression), `FlowControl` (held clients,
stalled upstream) and the `SpoolBridge` (disk), all given by the sidecar; `proxy/pipeline/runs.py`
turns a run into the engine's groups and copies the frames it keeps.

Size: one class on purpose, past 400 lines since runs are decided in bulk (#14): every path here ends in
the same write, confirmation and accounting steps, and splitting them would pass that state around.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from policies.circuit_breaker import BreakerState
from policies.config import BatchMode, Delivery, Level, Priority
from policies.engine import Decision, Engine, Verdict
from policies.queue import RunSlice
from policies.roles import DATA, REPLY, Role, role_of
from policies.sampling import PARKED, kept_of
from policies.verdicts import REASON_LOW_PRIORITY
from proxy.config.schema import SidecarConfig
from proxy.nats.envelope import RECORD_OVERHEAD, envelope_headers, pack, record_of
from proxy.nats.protocol import (
    DEFAULT_MAX_PAYLOAD,
    ClientParser,
    Pub,
    PubRun,
    add_header,
    encode_pub,
    header_value,
)
from proxy.pipeline.confirmations import Confirmations
from proxy.pipeline.deliveries import Deliveries
from proxy.pipeline.flow import FlowControl
from proxy.pipeline.message import OutMsg
from proxy.pipeline.queued_runs import queued_runs, scan_run
from proxy.pipeline.runs import (
    RunGroups,
    run_groups,
    select_frames,
    split_run,
    stamp_critical,
)
from proxy.pipeline.spool_bridge import SpoolBridge
from proxy.ports.host import RUN_HOLD, RUN_SPLIT, RUN_TAKEN, SplitFrom
from proxy.ports.outbound import return_freed_memory
from proxy.upstream.connection import Upstream
from proxy.upstream.journal import RunEntry

if TYPE_CHECKING:
    from proxy.ports.nats_port import ClientConnection

log = logging.getLogger(__name__)

CRITICAL = Priority.CRITICAL
FORWARD, QUEUE, DROP, BLOCK = Verdict.FORWARD, Verdict.QUEUE, Verdict.DROP, Verdict.BLOCK
HALF_OPEN = BreakerState.HALF_OPEN
ENVELOPE = BatchMode.ENVELOPE
JETSTREAM = Delivery.JETSTREAM
SPOOLED = Decision(Verdict.QUEUE, "spooled", ())
TOO_BIG = Decision(Verdict.DROP, "max_payload", ())
# Messages released from the queue per step of the pump (the upstream also flushes every 256 KiB).
PUMP_SLICE = 1024
PUMP_FIRST_SLICE = 64
# Bytes of runs queued in bulk after which an emptied queue hands the freed memory back (malloc_trim).
TRIM_AFTER_BYTES = 16 << 20
# Room kept in an envelope for its control line and KPI-Batch-* headers under the upstream's max_payload.
ENVELOPE_HEADER_ROOM = 256


class Publisher:
    """Classify, offer, write and pump: everything between a publish and the upstream socket."""

    def __init__(
        self,
        config: SidecarConfig,
        engine: Engine,
        upstream: Upstream,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        server_id: str,
        *,
        confirmations: Confirmations,
        deliveries: Deliveries,
        flow: FlowControl,
        spool_bridge: SpoolBridge,
    ) -> None:
        self.config = config
        self.engine = engine
        self.upstream = upstream
        self.loop = loop
        self.clock = clock
        self.server_id = server_id
        self.confirmations = confirmations
        self.deliveries = deliveries
        self.flow = flow
        self.spool_bridge = spool_bridge
        # Wired by the sidecar (its shutdown flag).
        self.shutting_down: Callable[[], bool] = lambda: False
        # The upstream's max_payload (from its INFO; the NATS default until then).
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self._next_msg_id = 1
        self._msg_id_prefix = f"{server_id}-".encode()
        self._pump_scheduled = False
        self._pump_timer: asyncio.TimerHandle | None = None
        # `batchMode: envelope` messages of this loop iteration, by subject.
        self._envelopes: dict[str, list[OutMsg]] = {}
        # Requests refused by policy (answered with a 503 status), by reason.
        self.refused: dict[str, int] = {}
        # Runs whose client waited for room in the PubAck window (_window_full), and its retry timer.
        self.window_holds = 0
        self._window_timer: asyncio.TimerHandle | None = None
        # Bytes of runs queued in bulk (one buffer each) since the queue was last empty: once it is, past
        # TRIM_AFTER_BYTES the freed buffers go back to the system (malloc keeps them otherwise: #14).
        self._runs_queued = 0

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

    def publish_run(
        self, op: PubRun, now: float, client: ClientConnection | None = None
    ) -> int | PubRun | SplitFrom:
        """Consecutive publishes (PubRun) decided per group and written as one slice (RUN_TAKEN); RUN_SPLIT:
        the caller offers them one by one (it re-parses the run); RUN_HOLD: the caller keeps the run and
        is not read until the PubAck window has room for its critical messages (`_window_full`); a PubRun:
        the part of the run that did not fit, which the caller keeps in the same way.

        At level none, when the engine would have forwarded each of them at once, the run goes as it
        came. Otherwise the engine decides each group in bulk (`Engine.decide_run`: shed, sampled, kept),
        the critical messages are written first, each with its Nats-Msg-Id (`_write_critical`), and the
        other kept frames copied into one write (`select_frames`)."""
        engine = self.engine
        found = run_groups(op, engine.classify, client.replies if client is not None else None, now)
        if found.enveloped:
            return RUN_SPLIT  # packed per subject (_envelope)
        upstream = self.upstream
        # can_stream, not can_send: a backed-up socket pauses the client after this read (flow_pause)
        # rather than sending its messages through the queue one by one.
        can_send = upstream.can_stream and not self.flow.upstream_stalled
        if not found.critical and engine.forward_batch(found.groups, op.n, now, can_send):
            frames = op.frames
            upstream.write(frames)
            upstream.track(RunEntry(client, frames, op.counts), len(frames))
            return RUN_TAKEN
        if not found.critical and engine.forwards_at_once(can_send):
            # At the rate ceiling: the tokens there are take the run's first messages at once (as offer()
            # forwards them one by one), the rest is queued in bulk behind them (_queue_run), or offered
            # one by one.
            tokens = engine.tokens(now)
            if 0 < tokens < op.n:
                head, tail = split_run(op, tokens)
                if self.publish_run(head, now, client) != RUN_TAKEN:
                    return RUN_SPLIT  # (the head has a token for each message: forward_batch takes it)
                rest = self.publish_run(tail, now, client)
                return SplitFrom(tail.frames) if rest == RUN_SPLIT else rest
        if found.critical:
            if (engine.level is Level.NONE and not found.all_critical) or self.spool_bridge.spool_mode:
                # At none, a mixed run goes in order, message by message, as a leaf node would forward it
                # (a run of critical messages alone keeps its order); with a spool, critical messages keep
                # their order behind it.
                return RUN_SPLIT
            count, room = found.critical_count, self.confirmations.window_room()
            if count > room:
                return self._window_full(op, found.all_critical, client, count, room, now)
        # While shedding, only what the socket takes now: no read past maxPendingBytes or the journal's
        # bound (the level-none fast path above streams one read per client, then pauses it). A run of
        # critical messages alone is not journaled (each awaits its own confirmation): it streams too.
        can_send = (
            upstream.can_stream if found.all_critical else upstream.can_send
        ) and not self.flow.upstream_stalled
        if engine.queue_size and can_send and engine.queue_size < engine.batch_size:
            # A partial batch waits for more messages: this run brings them, so it goes first.
            self.write_all(engine.take(now, batch_due=True), now)
        plan = engine.decide_run(found.groups, now, can_send)
        if plan is None:
            return RUN_TAKEN if self._queue_run(op, found, client, now) else RUN_SPLIT
        kept, apart, refused = select_frames(op.frames, found.plan_entries(plan))
        if refused:
            self._refuse_replies(client, refused, REASON_LOW_PRIORITY)
        if apart and not self._write_stamped(apart, found.apart_subjects(plan), client, now):
            parked = {g[0] for g, (share, _) in zip(found.groups, plan, strict=True) if share == PARKED}
            self._write_critical(apart, client, now, parked)
        if kept:
            upstream.write(kept)
            upstream.track(RunEntry(client, kept, found.kept_counts(plan)), len(kept))
            if engine.has_breakers:
                self._note_trials(found.groups, plan)
        return RUN_TAKEN

    def _note_trials(
        self, groups: list[tuple[str, int, Priority, Role]], plan: list[tuple[int, int]]
    ) -> None:
        """A half-open breaker's kept trials, written in a run: confirmed by the PONG after them (as
        `_written` notes each one of the per-message path)."""
        engine = self.engine
        for (subject, count, _, role), (share, phase) in zip(groups, plan, strict=True):
            if (
                role < REPLY
                and share >= 0  # not APART or PARKED: those are written one by one
                and kept_of(count, share, phase)
                and engine.breaker_state(subject) is HALF_OPEN
            ):
                self.confirmations.note_trial(subject)

    def _queue_run(self, op: PubRun, found: RunGroups, client: ClientConnection | None, now: float) -> bool:
        """A run of data that cannot be written now, queued in bulk (`Engine.queue_run`): its frames kept
        in one buffer per lane instead of one OutMsg each. False, with nothing done: offer them one by one.

        Only while the upstream is away or stalled (past flowControlMs), the rate ceiling holds the run
        back (fewer tokens than messages) or messages wait in the queue (they go first; the pump writes
        a queued run's messages in slices, RunSlice): with an empty queue and a socket backed up for a
        moment, the per-message path's slower intake lets the socket drain (bench (a))."""
        upstream = self.upstream
        if found.critical or any(group[3] is not DATA for group in found.groups):
            return False
        engine = self.engine
        if (
            upstream.connected
            and not self.flow.upstream_stalled
            and not engine.queue_size
            and engine.tokens(now) >= op.n
        ):
            return False  # not held back by the upstream, the rate ceiling or messages queued before
        frames = op.frames
        scanned = scan_run(frames, found, self.max_payload)
        if scanned is None:
            return False
        queued = engine.queue_run(
            found.groups,
            now,
            upstream.can_send,
            lambda lanes, keep: queued_runs(frames, scanned, found, lanes, keep, client, now),
            scanned[2],
        )
        if queued:
            self._runs_queued += len(frames)
            self.schedule_pump()
        return queued

    def _released(self) -> None:
        """After messages left the queue: once it is empty of runs queued in bulk, return their memory
        (only after many: malloc_trim walks the heap, too slow for each short backlog)."""
        if self._runs_queued and not self.engine.queue_size:
            if self._runs_queued >= TRIM_AFTER_BYTES:
                return_freed_memory()
            self._runs_queued = 0

    def _window_full(
        self,
        op: PubRun,
        all_critical: bool,
        client: ClientConnection | None,
        count: int,
        room: int,
        now: float,
    ) -> int | PubRun:
        """A run's `count` critical messages do not fit in the PubAck window (spool.maxPendingAcks, `room`
        left). While the PubAcks come back (Confirmations.window_flowing), the client waits, not read:
        TCP pushes back on the application as a JetStream client's own max-pending does, and the backlog
        costs the sidecar nothing. A run of critical messages alone is cut: what fits goes now, the rest
        waits (returned, for the client to keep). It is retried once half the window (or the run) fits.
        A JetStream that stopped answering for `upstream.flowControlMs` and the other sources (HTTP
        ingest) take the queue, one by one, as before: there critical messages wait for PubAcks
        (Engine.hold_critical) while everything else goes on, and are spooled when it is full."""
        confirmations = self.confirmations
        if client is None or not confirmations.window_flowing(now):
            return RUN_SPLIT
        window = self.config.spool.max_pending_acks
        rest: int | PubRun = RUN_HOLD
        if all_critical:
            if room > 0:
                head, tail = split_run(op, room)
                if self.publish_run(head, now, client) != RUN_TAKEN:
                    return RUN_SPLIT
                rest, count = tail, tail.n
            wanted = min(count, max(1, window // 2))
        elif count > window:
            # A mixed run is not cut, and this one never fits whole: one by one (its critical messages
            # wait for PubAcks in the queue, Engine.hold_critical).
            return RUN_SPLIT
        else:
            # Not cut: it waits for room for all its critical messages (retried sooner, it would be held
            # again at once, and again, until that much room came back).
            wanted = count
        confirmations.window_wait(wanted)
        if self._window_timer is None:
            # Looked at again after flowControlMs even if no PubAck comes back (then it takes the queue).
            self._window_timer = self.loop.call_later(
                self.config.upstream.flow_control_ms / 1000, self._window_retry
            )
        self.window_holds += 1
        return rest

    def _window_retry(self) -> None:
        self._window_timer = None
        self.schedule_pump()

    def _write_stamped(
        self,
        frames: bytes,
        subjects: dict[bytes, tuple[str, Any, Role]] | None,
        client: ClientConnection | None,
        now: float,
    ) -> bool:
        """`_write_critical` in bulk: the frames stamped in C (`stamp_critical`: Nats-Msg-Id and PubAck
        reply), one OutMsg each, one write, the PubAcks (or the PING barrier) awaited together. False, with
        nothing done, for a run the per-message path decides: its subjects mix `delivery: jetstream` and
        not, or a frame has a reply subject, a Nats-Msg-Id, or would grow past max_payload."""
        if not subjects:
            return False
        kinds = {rule is not None and rule.delivery is JETSTREAM for _, rule, _ in subjects.values()}
        if len(kinds) != 1:
            return False
        (jetstream,) = kinds
        confirmations = self.confirmations
        first_token = confirmations.next_token
        ack_prefix = confirmations.ack_prefix_bytes if jetstream else None
        stamped = stamp_critical(
            frames, self._msg_id_prefix, self._next_msg_id, ack_prefix, first_token, self.max_payload
        )
        if stamped is None:
            return False
        self._next_msg_id += len(stamped)
        if jetstream:
            confirmations.reserve_tokens(len(stamped))
        msgs: list[OutMsg] = []
        counts: dict[bytes, int] = {}
        token = first_token
        for wire, frame, size in stamped:
            subject, rule, role = subjects[wire]
            msg = OutMsg(subject, None, CRITICAL, size, frame, client, now, rule, role)
            if jetstream:
                msg.ack_token = str(token)
                token += 1
            msgs.append(msg)
            counts[wire] = counts.get(wire, 0) + 1
        self.upstream.write(b"".join([msg.frame for msg in msgs]))
        if client is not None and not client.echo:
            for msg in msgs:
                self.deliveries.expect_echo(client, msg)
        engine = self.engine
        for wire, count in counts.items():
            subject, _, role = subjects[wire]
            engine.observe_latency(subject, 0.0, role, count)
            if not jetstream and engine.has_breakers and engine.breaker_state(subject) is HALF_OPEN:
                confirmations.note_trial(subject)
        if jetstream:
            confirmations.await_acks(msgs, now)
        else:
            confirmations.await_confirmations(msgs)
        return True

    def _write_critical(
        self,
        frames: bytes,
        client: ClientConnection | None,
        now: float,
        parked: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """The critical messages of a run the engine decided in bulk (counted forwarded already), each with
        its Nats-Msg-Id (and PubAck reply subject), written in one slice ahead of the run's other kept
        messages (the priority queue's order); then each awaits its PubAck or PONG confirmation. Those of
        the `parked` subjects (PARKED: their breaker is open, nothing counted yet) are offered one by one:
        the engine parks them until the breaker is no longer open."""
        parser = ClientParser(max_payload=-1)
        parser.headers = True  # HPUBs in a run were accepted already
        replies = client.replies if client is not None else None
        classify = self.engine.classify
        rules: dict[tuple[str, bool], Any] = {}
        msgs: list[OutMsg] = []
        for op in parser.feed_data(frames):
            subject = op.subject
            role = role_of(subject, op.reply is not None, replies, now)
            key = (subject, role < REPLY)
            rule = rules.get(key, rules)
            if rule is rules:
                rule = rules[key] = classify(subject, "critical", role < REPLY)[1]
            headers = op.headers if op.hdr_size > 0 else None
            msg = self._critical_msg(
                subject, op.reply, op.payload, headers, op.frame, client, rule, now, role
            )
            if parked and role is DATA and subject in parked:
                self.offer(msg, now)
                continue
            if msg.size > self.max_payload:
                # With its Nats-Msg-Id it no longer fits: never written (as offer() decides it).
                self.engine.note_unforwarded(subject, CRITICAL, role, "max_payload")
                self.refuse(msg, "max_payload")
                continue
            msgs.append(msg)
        self.write_all(msgs, now)

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
            headers = add_header(headers, "Nats-Msg-Id", f"{self.server_id}-{self._next_msg_id}")
            self._next_msg_id += 1
            frame = b""
        wire_reply = reply
        if reply is None and rule is not None and rule.delivery is JETSTREAM:
            token, wire_reply = self.confirmations.new_ack_reply()
            frame = b""
        if not frame:
            frame = encode_pub(subject, wire_reply, payload, headers)
        size = len(payload) + len(headers or b"")
        msg = OutMsg(subject, reply, CRITICAL, size, frame, client, now, rule, role)
        msg.ack_token = token
        return msg

    def offer(self, msg: OutMsg, now: float) -> Decision:
        """Ask the engine, then write, queue, refuse or spool the message as it decided."""
        if msg.size > self.max_payload:
            # Accepted under a larger limit (before the upstream's INFO, or from an earlier server): the
            # upstream would close the shared connection on it, so it never goes out.
            self.engine.note_dropped(msg, "max_payload")
            self.engine.breaker_failure(msg.subject, now)
            self.refuse(msg, "max_payload")
            return TOO_BIG
        decision = self.engine.offer(msg, now, self.upstream.can_send)
        verdict = decision.verdict
        if verdict is FORWARD:
            self.write(msg, now)
        elif verdict is QUEUE:
            self.schedule_pump()
        elif verdict is DROP:
            self.refuse(msg, decision.reason or "dropped")
        elif msg.priority is CRITICAL and self.spool_bridge.spool_one(msg):
            # BLOCK: the queue is full of critical messages; disk takes it (else the caller holds it).
            self.engine.note_spooled(msg)
            self.spool_bridge.wake()
            return SPOOLED
        for evicted in decision.evicted:
            self.refuse(evicted, "queue_full")
        return decision

    def _refuse_replies(self, client: ClientConnection | None, replies: list[bytes], reason: str) -> None:
        """`refuse` for the requests of a run the engine shed in bulk, given by their reply subjects."""
        refused = self.refused
        refused[reason] = refused.get(reason, 0) + len(replies)
        if client is not None and not client.closed and client.headers:
            for reply in replies:
                client.send_status(reply.decode("utf-8", "surrogateescape"), 503, reason)

    def refuse(self, msg: OutMsg, reason: str) -> None:
        """A request the sidecar did not forward fails fast: a 503 status message on its reply subject."""
        if msg.reply is None or msg.role >= REPLY:
            return
        refused = self.refused
        refused[reason] = refused.get(reason, 0) + 1
        client = msg.client
        if client is not None and not client.closed:
            client.send_status(msg.reply, 503, reason)

    def write(self, msg: OutMsg, now: float) -> None:
        """Hand one message to the upstream and to whatever must confirm it (journal, PONG, PubAck)."""
        rule = msg.rule
        if rule is not None and rule.batch_mode is ENVELOPE and msg.reply is None and msg.priority < CRITICAL:
            self._envelope(msg)
        else:
            self.upstream.write(msg.frame)
            if msg.priority is not CRITICAL:
                self.upstream.track(msg, len(msg.frame))
        self._written(msg, now)

    def write_all(self, msgs: list[OutMsg], now: float) -> None:
        """`write` for each of `msgs`, in order, their frames in one upstream write (a slice the queue
        released, a run's critical messages)."""
        if len(msgs) < 2 and not (msgs and type(msgs[0]) is RunSlice):
            for msg in msgs:
                self.write(msg, now)
            return
        upstream = self.upstream
        written: list[Any] = []
        frames: list[bytes] = []
        for msg in msgs:
            if type(msg) is RunSlice:
                written.append(msg)
                frames.append(msg.item.frames)
                continue
            rule = msg.rule
            if (
                rule is not None
                and rule.batch_mode is ENVELOPE
                and msg.reply is None
                and msg.priority < CRITICAL
            ):
                self._envelope(msg)
                continue
            written.append(msg)
            frames.append(msg.frame)
        if not written:
            return
        upstream.write(b"".join(frames))
        for msg in written:
            if type(msg) is RunSlice:
                self._written_slice(msg, now)
                continue
            if msg.priority is not CRITICAL:
                upstream.track(msg, len(msg.frame))
            self._written(msg, now)

    def _written_slice(self, piece: RunSlice, now: float) -> None:
        """`_written` for messages of a run queued in bulk that left the queue together: one journal
        entry, one latency observation per group, a half-open breaker's trials noted."""
        held = piece.item
        self.upstream.track(RunEntry(held.client, held.frames, held.counts), len(held.frames))
        engine = self.engine
        waited = now - held.received_at
        for subject, k, _, role in piece.groups:
            engine.observe_latency(subject, waited, role, k)
            if engine.has_breakers and engine.breaker_state(subject) is HALF_OPEN:
                self.confirmations.note_trial(subject)

    def _written(self, msg: OutMsg, now: float) -> None:
        """What follows a message's upstream write: echo, latency, its PubAck or PONG confirmation."""
        client = msg.client
        if client is not None and not client.echo:
            self.deliveries.expect_echo(client, msg)
        self.engine.observe_latency(msg.subject, now - msg.received_at, msg.role)
        if msg.ack_token is not None:
            self.confirmations.await_ack(msg, now)
            return
        if self.engine.has_breakers and self.engine.breaker_state(msg.subject) is HALF_OPEN:
            self.confirmations.note_trial(msg.subject)
        if msg.priority is CRITICAL:
            self.confirmations.await_confirmation(msg)

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
            self.take_back([msg for msgs in envelopes.values() for msg in msgs])
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

    def schedule_pump(self) -> None:
        """Run `pump` once at the end of this loop iteration."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.loop.call_soon(self.pump)

    def log_transitions(self) -> None:
        """One log line per degradation level change."""
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
            self.log_transitions()  # the level moved between ticks (a burst)
        if self.engine.queue_size:
            bridge = self.spool_bridge
            if bridge.spool is not None and self.engine.critical_queued() and bridge.spool_mode:
                bridge.spool_queued_critical()
            self.schedule_pump()

    def pump(self) -> None:
        """Release what the engine says is due, retry held clients, and set a timer for the next deadline."""
        self._pump_scheduled = False
        if self._pump_timer is not None:
            self._pump_timer.cancel()
            self._pump_timer = None
        now = self.clock()
        upstream = self.upstream
        spool = self.spool_bridge.spool
        # While critical messages wait on disk, only critical ones (and replies) leave the queue.
        self.engine.hold_below_critical = (
            spool is not None and spool.messages > 0 and not self.shutting_down()
        )
        if upstream.can_send:
            self.confirmations.resend_unconfirmed()
            # In slices, so that a paused upstream stops the release instead of buffering megabytes, each
            # sized to the journal's room at the last slice's mean frame size (a slice of 1,024 frames of
            # 1 KiB went 800 KB past maxUnconfirmedBytes after a reconnect).
            journal = upstream.journal
            mean = 0
            while upstream.can_send:
                room = journal.limit - journal.nbytes
                count = PUMP_FIRST_SLICE if not mean else max(1, min(PUMP_SLICE, room // mean))
                msgs = self.engine.take(now, count)
                self.write_all(msgs, now)
                taken = nbytes = 0
                for msg in msgs:
                    if type(msg) is RunSlice:
                        taken += msg.n
                        nbytes += len(msg.item.frames)
                    else:
                        taken += 1
                        nbytes += len(msg.frame)
                if taken < count:
                    break
                mean = max(1, nbytes // taken)
        self._released()
        self.flow.resume_held()
        deadline = self.engine.next_deadline()
        if deadline is not None and self.upstream.can_send:
            self._pump_timer = self.loop.call_later(max(deadline - now, 0.0005), self.pump)

    def drain_now(self) -> int:
        """Forward everything queued now, ignoring batching delay and the rate ceiling (admin action)."""
        now = self.clock()
        if not self.upstream.can_send:
            return 0
        msgs = self.engine.drain(now)
        for msg in msgs:
            self.write(msg, now)
        self._released()
        return len(msgs)

    def clear_queue(self) -> int:
        """Discard non-critical queued messages (admin action), counted as reason="cleared"."""
        cleared = len(self.engine.clear())
        self._released()
        return cleared

    def take_back(self, entries: list[Any]) -> None:
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
            self.refuse(msg, "upstream_lost")
        log.warning(
            "%d publishes written upstream were never confirmed: %d queued again, %d dropped (upstream_lost)",
            len(msgs),
            len(msgs) - len(dropped),
            len(dropped),
        )
        self.schedule_pump()

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
            header = header_value(op.headers, "KPI-Priority") if op.hdr_size > 0 else None  # type: ignore[arg-type]
            priority, rule = classify(op.subject, header, role < REPLY)
            msgs.append(OutMsg(op.subject, op.reply, priority, op.size, op.frame, client, now, rule, role))
        return msgs
