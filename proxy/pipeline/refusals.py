"""Refused publishes: what happens when the upstream says a publish was not allowed.

One job: `-ERR 'Permissions Violation for Publish to "<subject>"'` from the upstream (its user may not
publish there). The server answers in order, so the refused message is the oldest one to that subject
still unconfirmed: found in the write journal (a run's count, or one message) or among the critical
messages awaiting their PONG or PubAck (`Confirmations.take_unconfirmed`); it is counted dropped
(`permissions`) instead of forwarded, its application gets the same -ERR as from nats-server (the
connection stays open), and the subject's breaker records a failure. Failures are remembered per subject
(bounded) so that the warning is logged once per episode and a quiet `recoveryDelayMs` resets a closed
breaker's count. Collaborators: the `Engine` (counts, breakers), the `Upstream` (journal) and the
`Confirmations`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from policies.circuit_breaker import BreakerState
from policies.engine import Engine
from policies.roles import DATA, REPLY, subject_role
from proxy.nats.protocol import encode_err
from proxy.pipeline.confirmations import Confirmations
from proxy.upstream.connection import Upstream
from proxy.upstream.journal import RunEntry

if TYPE_CHECKING:
    from proxy.ports.nats_port import ClientConnection

log = logging.getLogger(__name__)

CLOSED = BreakerState.CLOSED
# Bound on the subjects whose last upstream failure time is remembered (the breaker table's size).
MAX_FAILURE_RECORDS = 1000


class RefusedPublishes:
    """Settle publishes the upstream refused, and remember each subject's last refusal."""

    def __init__(
        self, engine: Engine, upstream: Upstream, confirmations: Confirmations, clock: Callable[[], float]
    ) -> None:
        self.engine = engine
        self.upstream = upstream
        self.confirmations = confirmations
        self.clock = clock
        self.last_failure: dict[str, float] = {}

    def on_publish_refused(self, text: str) -> None:
        """`-ERR 'Permissions Violation for Publish to "<subject>"'`: settle the message, open the breaker."""
        subject = text.rpartition(" ")[2].strip('"')
        self._settle(subject, text)
        now = self.clock()
        self.engine.breaker_failure(subject, now)
        if subject not in self.last_failure:
            # Once per episode (until a quiet recoveryDelayMs), not once per refused message.
            log.warning("upstream refused a publish: %s", text)
            if len(self.last_failure) >= MAX_FAILURE_RECORDS:
                self.last_failure.pop(next(iter(self.last_failure)))
        self.last_failure[subject] = now

    def _settle(self, subject: str, text: str) -> None:
        """Find the oldest unconfirmed message to `subject`, count it refused, tell its application."""
        engine = self.engine
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
                    priority = engine.classify(subject, None, role < REPLY)[0]
                    engine.note_refused(subject, priority, role)
                    client, found = entry.client, True
                    break
            elif entry.subject == subject:
                journal.remove(entry, len(entry.frame))
                engine.note_refused(subject, entry.priority, entry.role)
                client, found = entry.client, True
                break
        if not found:
            msg = self.confirmations.take_unconfirmed(subject)
            if msg is not None:
                engine.note_refused(subject, msg.priority, msg.role)
                client = msg.client
        if client is not None and not client.closed:
            client.send(encode_err(text))

    def tick(self, now: float) -> None:
        """Forget the failures of subjects quiet for recoveryDelayMs."""
        if not self.last_failure:
            return
        # A closed breaker's failure count means "consecutive": a quiet recoveryDelayMs resets it.
        quiet = self.engine.config.recovery_delay_ms / 1000
        for subject, last in list(self.last_failure.items()):
            if now - last >= quiet:
                del self.last_failure[subject]
                if self.engine.breaker_state(subject) is CLOSED:
                    self.engine.breaker_success(subject, now)
