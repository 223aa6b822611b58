"""Measuring for the engine's new signals (policies/signals.py): the shell only measures, the core decides.

- PING -> PONG round trips of the upstream connection (the PINGs it already writes for confirmations and
  keepalives; each PONG answers the oldest PING in flight), and the age of the oldest unanswered PING;
- publish -> PubAck round trips under `delivery: jetstream`;
- the disk spool's bytes and limit, for its trend.
Per PONG and per PubAck: one subtraction and one call; the rest once a tick. Nothing per message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from policies.signal_board import PING, PUBACK

if TYPE_CHECKING:
    from proxy.sidecar import Sidecar

log = logging.getLogger(__name__)


class SignalFeeds:
    """Wires the upstream's PONGs and the PubAcks into the engine's RTT trackers."""

    __slots__ = ("_sidecar",)

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        sidecar.upstream.on_rtt = self.on_pong

    def on_pong(self, now: float, rtt_s: float) -> None:
        """A PONG answered the PING written `rtt_s` ago."""
        self._sidecar.engine.observe_rtt(now, rtt_s, PING)

    def on_connected(self) -> None:
        """A new connection, maybe to another server: the baselines start again."""
        self._sidecar.engine.reset_rtt()

    def on_pub_ack(self, now: float, rtt_s: float) -> None:
        """A timed PubAck came back `rtt_s` after its message was written (Confirmations' probe)."""
        self._sidecar.engine.observe_rtt(now, rtt_s, PUBACK)

    def tick_args(self, now: float) -> dict[str, Any]:
        """What the engine's tick takes from here; also hands it the oldest PING's age."""
        sidecar = self._sidecar
        sidecar.engine.observe_in_flight(sidecar.upstream.oldest_ping_age(now))
        args: dict[str, Any] = {"upstream_connected": sidecar.upstream.connected}
        spool = sidecar.spool
        if spool is not None:
            args["spool_bytes"] = spool.bytes
            args["spool_capacity"] = spool.max_bytes
        return args


def log_class_transitions(sidecar: Sidecar) -> None:
    """One line per priority class level change (stream fill), as the sidecar logs its own level."""
    for change in sidecar.engine.pop_class_transitions():
        t = change.transition
        log.warning(
            "%s messages: level %s -> %s (stream %s at %.0f%% of its fill threshold)",
            change.priority.label,
            t.from_level.label,
            t.to_level.label,
            change.stream,
            t.load_percent,
        )
