"""Confirmations: when a written publish counts as delivered, and what happens when it does not.

One job: keep what was written upstream until the server confirms it. Critical messages wait for the PONG
of a PING written after them (the PING barrier: one batch per PING, resent after a reconnect when the PONG
never came); `delivery: jetstream` ones wait for their PubAck on the `_KPI_ACK.<server id>.*` inbox
(resent on the ack timeout), at most `maxPendingAcks` at once (the PubAck window: a run that does not fit
waits, its client not read, while PubAcks come back); half-open breakers' trials succeed on the next PONG;
a publish the server refused is taken from here by `proxy.pipeline.refusals`. Collaborators: the
`Upstream` (PINGs, journal, hold), the `Engine` (breakers, refused counts), and two callbacks the sidecar
wires to the publish path: `write` (send again) and `schedule_pump`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from policies.config import Delivery
from policies.engine import Engine
from proxy.config.schema import SidecarConfig
from proxy.nats.protocol import Msg, encode_sub
from proxy.nats.speedups import settle_acks
from proxy.pipeline.message import OutMsg
from proxy.upstream.connection import RTT_QUIET_BYTES, Upstream

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

# The upstream subscription that receives PubAcks for `delivery: jetstream`; application subs start at 1.
ACK_SID = 0
_ACK_SID_BYTES = b"%d" % ACK_SID
# A PubAck is timed only for a message written with at most this many PubAcks awaited ahead of it.
QUIET_PUBACKS = 16


def _unset_write(msg: OutMsg, now: float) -> None:
    raise RuntimeError("Confirmations.write is wired by the sidecar")


class Confirmations:
    """Unconfirmed critical batches, PubAcks awaited, breaker trials and remembered failures."""

    def __init__(
        self,
        config: SidecarConfig,
        engine: Engine,
        upstream: Upstream,
        clock: Callable[[], float],
        server_id: str,
    ) -> None:
        self.config = config
        self.engine = engine
        self.upstream = upstream
        self.clock = clock
        # Wired by the sidecar to the publish path.
        self.write: Callable[[OutMsg, float], None] = _unset_write
        self.schedule_pump: Callable[[], None] = lambda: None
        # Told (now, seconds) of a PubAck round trip (the signals' `puback` RTT source): one message at a
        # time is timed (the probe), and only one written with the upstream quiet (_quiet) and
        # at most QUIET_PUBACKS awaited ahead of it: behind thousands of acks in flight the round trip
        # measures how long JetStream takes to store them, the sidecar's own burst, not its latency.
        self.on_acked: Callable[[float, float], None] = lambda now, seconds: None
        self._probe: tuple[str, float] | None = None
        # Other answers on the PubAck inbox, by the token's first letter (the stream monitor's STREAM.INFO
        # replies); PubAck tokens are decimal.
        self.other_replies: dict[str, Callable[[str, Msg], None]] = {}
        # Critical messages written upstream and not yet confirmed by a PONG (one batch per flush, keyed
        # by an id), and those whose connection died before the PONG, to resend after the reconnect.
        self._unconfirmed_batch: list[OutMsg] = []
        self._batch_ping = -1
        self.inflight: dict[int, list[OutMsg]] = {}
        self._batch_ids = itertools.count(1)
        self.resend: deque[OutMsg] = deque()
        # `delivery: jetstream` critical messages waiting for their PubAck, by the token in their reply.
        self.ack_prefix = f"_KPI_ACK.{server_id}."
        # How the upstream's MSG line of a PubAck starts (on_pub_acks).
        self.ack_line = f"MSG {self.ack_prefix}".encode()
        self._ack_subscribed = False
        self.ack_subscription_denied = False
        self._acks: dict[str, tuple[OutMsg, float]] = {}
        self.ack_prefix_bytes = self.ack_prefix.encode()
        self._next_token = 1
        # When PubAcks last came back, and how many a run held for the window waits to fit (window_wait).
        self._last_settled = float("-inf")
        self._window_wanted = 0
        # Breakers: subjects of half-open trials written in this loop iteration.
        self._trial_subjects: set[str] = set()
        self._trial_ping = -1

    # -- the PING barrier ----------------------------------------------------------------------------
    def await_confirmation(self, msg: OutMsg) -> None:
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
        self._unconfirmed_batch = self.inflight[batch_id] = [msg]
        self._batch_ping = upstream.pings_written
        upstream.confirm(lambda ok: self._confirmed(batch_id, ok))

    def _confirmed(self, batch_id: int, ok: bool) -> None:
        batch = self.inflight.pop(batch_id, [])
        if batch is self._unconfirmed_batch:
            self._unconfirmed_batch = []
        if not ok:
            # Written but never confirmed: the server may not have it. Resend after the reconnect; the
            # Nats-Msg-Id lets JetStream drop the duplicate if it did.
            self.resend.extend(batch)

    def resend_unconfirmed(self) -> None:
        """Write again what a lost connection never confirmed (once the upstream can take it)."""
        if not self.resend or not self.upstream.can_send:
            return
        now = self.clock()
        resend, self.resend = self.resend, deque()
        for msg in resend:
            self.write(msg, now)

    def drop_resend_above(self, limit: int) -> None:
        """The upstream's max_payload shrank: what is above it can never be resent."""
        self.resend = deque(m for m in self.resend if m.size <= limit)

    def note_trial(self, subject: str) -> None:
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

    # -- PubAcks -------------------------------------------------------------------------------------
    def new_ack_reply(self) -> tuple[str, str]:
        """A token and the reply subject its PubAck comes back on."""
        token = str(self.reserve_tokens(1))
        return token, self.ack_prefix + token

    @property
    def next_token(self) -> int:
        """The token the next message awaiting a PubAck gets."""
        return self._next_token

    def reserve_tokens(self, count: int) -> int:
        """`count` consecutive tokens (decimal, from the one returned on) for messages stamped in bulk."""
        first = self._next_token
        self._next_token += count
        return first

    def await_ack(self, msg: OutMsg, now: float) -> None:
        """Keep a `delivery: jetstream` message until its PubAck (or resend it on the ack timeout)."""
        acks = self._acks
        token: str = msg.ack_token  # type: ignore[assignment]
        acks[token] = (msg, now + self.config.spool.ack_timeout_ms / 1000)
        if self._probe is None and len(acks) <= QUIET_PUBACKS and self._quiet:
            self._probe = (token, now)
        if len(acks) >= self.config.spool.max_pending_acks:
            self.engine.hold_critical = True  # the queue holds critical messages until PubAcks come back

    @property
    def _quiet(self) -> bool:
        """At most RTT_QUIET_BYTES written and unconfirmed or unsent: a round trip starting now measures the
        server's latency, not how long it takes to read what is ahead (as for a PING)."""
        upstream = self.upstream
        return upstream.journal.nbytes + upstream.pending_bytes <= RTT_QUIET_BYTES

    def await_acks(self, msgs: list[OutMsg], now: float) -> None:
        """await_ack for messages written together (their tokens set): one deadline, one probe check."""
        acks = self._acks
        if self._probe is None and len(acks) < QUIET_PUBACKS and self._quiet:
            self._probe = (msgs[0].ack_token, now)  # type: ignore[assignment]
        entry_deadline = now + self.config.spool.ack_timeout_ms / 1000
        for msg in msgs:
            acks[msg.ack_token] = (msg, entry_deadline)  # type: ignore[index]
        if len(acks) >= self.config.spool.max_pending_acks:
            self.engine.hold_critical = True

    def await_confirmations(self, msgs: list[OutMsg]) -> None:
        """await_confirmation for messages written together: they share the open batch and its PING."""
        self.await_confirmation(msgs[0])
        self._unconfirmed_batch.extend(msgs[1:])

    @property
    def pending_acks(self) -> dict[str, tuple[OutMsg, float]]:
        """`delivery: jetstream` messages awaiting their PubAck, by token."""
        return self._acks

    def on_pub_acks(self, frames: bytes, pos: int) -> int:
        """The PubAcks from pos on in a run of plain MSGs that say JetStream stored an awaited message,
        settled in C (`settle_acks`) without a Msg object each; returns where the first other frame starts
        (pos if none: a failure, another reader's token, a duplicate go through on_pub_ack)."""
        if settle_acks is None:
            return pos
        engine = self.engine
        entries: list[tuple[OutMsg, float]] | None = [] if engine.has_breakers else None
        end = settle_acks(frames, pos, self.ack_line, _ACK_SID_BYTES, self._acks, entries)
        if end != pos:
            now = self.clock()
            if entries:
                for out, _ in entries:
                    engine.breaker_success(out.subject, now)
            self._settled(now)
        return end

    def _settled(self, now: float) -> None:
        """PubAcks came back: time the probe if it was among them, open the window again."""
        self._last_settled = now
        probe = self._probe
        if probe is not None and probe[0] not in self._acks:
            self._probe = None
            self.on_acked(now, now - probe[1])
        self._release_ack_hold()
        wanted = self._window_wanted
        if wanted and len(self._acks) + wanted <= self.config.spool.max_pending_acks:
            self._window_wanted = 0
            self.schedule_pump()  # which retries the held clients

    # -- the PubAck window ---------------------------------------------------------------------------
    def window_room(self) -> int:
        """How many more messages may await their PubAck (maxPendingAcks less those awaited)."""
        return self.config.spool.max_pending_acks - len(self._acks)

    def window_flowing(self, now: float) -> bool:
        """The window is full of PubAcks that are coming back: some came back, or the oldest was written,
        less than `upstream.flowControlMs` ago. Then a run waits for room in the window (its client is not
        read: TCP pushes back, nothing is queued); otherwise JetStream stopped answering and the run's
        messages take the queue (and the spool) as while the upstream is away."""
        budget = self.config.upstream.flow_control_ms / 1000
        if now - self._last_settled < budget:
            return True
        acks = self._acks
        if not acks:
            return True  # nothing awaited: nothing says JetStream stopped answering
        oldest_deadline = next(iter(acks.values()))[1]
        return oldest_deadline - self.config.spool.ack_timeout_ms / 1000 > now - budget

    def window_wait(self, count: int) -> None:
        """A run of `count` messages waits for that much room: pump (retrying held clients) once it fits."""
        self._window_wanted = max(self._window_wanted, count)

    def on_pub_ack(self, msg: Msg) -> None:
        """A message on the PubAck inbox: confirms (or fails) the message its token names."""
        token = msg.subject.decode().rpartition(".")[2]
        entry = self._acks.pop(token, None)
        if entry is None:
            # Not an awaited PubAck (those tokens are decimal): another answer, by its first letter.
            handler = self.other_replies.get(token[:1])
            if handler is not None:
                handler(token, msg)
            return
        out = entry[0]
        now = self.clock()
        body = msg.body[msg.hdr_size :] if msg.hdr_size > 0 else msg.body
        failed = msg.hdr_size > 0 and not body  # a status message: 503 no stream captures the subject
        if not failed and not (body.startswith(b'{"stream":') and b'"error"' not in body):
            # Anything but the PubAck JetStream writes ({"stream":...,"seq":...}): read it as JSON.
            try:
                failed = "error" in json.loads(body)
            except ValueError:
                failed = True
        if failed:
            # Kept, never dropped: resent on the ack-timeout schedule; the breaker records the failure.
            self.engine.breaker_failure(out.subject, now)
            self._acks[token] = (out, now + self.config.spool.ack_timeout_ms / 1000)
        else:
            self.engine.breaker_success(out.subject, now)
            self._settled(now)

    def _release_ack_hold(self) -> None:
        if self.engine.hold_critical and len(self._acks) < self.config.spool.max_pending_acks:
            self.engine.hold_critical = False
            self.schedule_pump()

    def _expire_acks(self, now: float) -> None:
        expired = [token for token, (_, deadline) in self._acks.items() if deadline <= now]
        msgs = [self._acks.pop(token)[0] for token in expired]
        if self._probe is not None and self._probe[0] not in self._acks:
            self._probe = None  # timed out: resent, and a lost answer is no round trip
        self._release_ack_hold()
        for msg in msgs:
            self.engine.breaker_failure(msg.subject, now)
            if self.upstream.can_send:
                self.write(msg, now)  # again, same Nats-Msg-Id: JetStream drops it if it had arrived
            else:
                self.resend.append(msg)

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
            self.upstream.subscribe(ACK_SID, self.ack_prefix + "*", None)
        else:
            self.upstream.unsubscribe(ACK_SID)

    def ack_frames(self) -> bytes:
        """The PubAck inbox's SUB for a (re)connect, when a `delivery: jetstream` rule exists."""
        self._ack_subscribed = self.wants_ack_subscription
        return encode_sub(self.ack_prefix + "*", None, ACK_SID) if self._ack_subscribed else b""

    def ack_subscription_refused(self, subject: str, text: str) -> None:
        """The upstream user may not subscribe to the PubAck inbox: say so once."""
        if not self.ack_subscription_denied:
            log.error(
                "the upstream user may not subscribe to %s: `delivery: jetstream` messages cannot be "
                "confirmed by PubAck (they are resent on the ack timeout, never dropped); allow "
                "subscribe on _KPI_ACK.> for this user (%s)",
                subject,
                text,
            )
        self.ack_subscription_denied = True

    # -- connection events ---------------------------------------------------------------------------
    def on_upstream_lost(self) -> None:
        """A PubAck can no longer arrive on this connection: resend after the reconnect."""
        self.resend.extend(msg for msg, _ in self._acks.values())
        self._acks.clear()
        self._probe = None
        self.engine.hold_critical = False

    @property
    def settled(self) -> bool:
        """Nothing written waits for a confirmation, and nothing waits to be resent."""
        return not self.resend and not self.inflight and not self._acks

    def unconfirmed(self) -> list[OutMsg]:
        """Everything written and never confirmed (at shutdown: spooled)."""
        msgs = list(self.resend) + [msg for msg, _ in self._acks.values()]
        for batch in self.inflight.values():
            msgs.extend(batch)
        return msgs

    def tick(self, now: float) -> None:
        """Resend PubAcks past their timeout."""
        if self._acks:
            self._expire_acks(now)

    def take_unconfirmed(self, subject: str) -> OutMsg | None:
        """Remove and return the oldest critical message to `subject` written and not yet confirmed (by a
        PONG or a PubAck): the upstream refused it (RefusedPublishes)."""
        for batch in self.inflight.values():
            for i, msg in enumerate(batch):
                if msg.subject == subject:
                    del batch[i]
                    return msg
        for token, (msg, _) in self._acks.items():
            if msg.subject == subject:
                del self._acks[token]
                if self._probe is not None and self._probe[0] == token:
                    self._probe = None
                self._release_ack_hold()
                return msg
        return None
