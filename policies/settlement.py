"""Messages the engine counted or handed out whose fate the shell reports: taken back after a lost
connection, refused upstream, never written, settled after a hand-off (forwarded, dropped, spooled),
replayed from the spool; and the latency of each write.

`Engine.take_back`, `Engine.note_*` and `Engine.observe_latency` are these functions, bound as the engine's
methods: they read and update the engine's state as its other methods do (policies/engine.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from policies.config import Priority
from policies.queue import lane_of
from policies.roles import DATA, REPLY, Role
from policies.verdicts import REASON_PERMISSIONS, REASON_UPSTREAM_LOST, Item

if TYPE_CHECKING:
    from policies.engine import Engine

LOW: Final = Priority.LOW
MEDIUM: Final = Priority.MEDIUM
CRITICAL: Final = Priority.CRITICAL


def take_back(self: Engine, items: Sequence[Any], now: float) -> list[Any]:
    """Messages counted forwarded whose upstream connection died before a PONG confirmed them.

    `high` and `medium` ones (and replies and control messages of any priority) go back to the head
    of their lanes, oldest first, to be resent (at-least-once: the server may have had some); `low`
    data and requests, and any that find no room even by
    evicting lower priorities, are dropped with reason `upstream_lost`. Returns the dropped ones and
    those evicted to make room (counted `queue_full`).
    """
    acc = self._acc
    queue = self._queue
    dropped: list[Any] = []
    # Newest first, each pushed to the head: the oldest ends up first.
    for item in reversed(items):
        role = item.role
        acc.unforward(item.subject, item.priority, role)
        priority = item.priority if self._prioritize else MEDIUM
        if priority <= LOW and role < REPLY:
            acc.drop(item.subject, REASON_UPSTREAM_LOST, role)
            dropped.append(item)
            continue
        room, evicted = self._make_room(lane_of(priority, role), now)
        dropped.extend(evicted)
        if not room:
            acc.drop(item.subject, REASON_UPSTREAM_LOST, role)
            dropped.append(item)
            continue
        queue.push_front(item, priority, now, role)
    return dropped


def note_refused(self: Engine, subject: str, priority: Priority, role: Role = DATA) -> None:
    """The upstream refused a forwarded message (permissions): it moves from forwarded to dropped."""
    self._acc.unforward(subject, priority, role)
    self._acc.drop(subject, REASON_PERMISSIONS, role)


def note_unforwarded(self: Engine, subject: str, priority: Priority, role: Role, reason: str) -> None:
    """A message decide_run counted forwarded was never written (`reason`, e.g. max_payload): it
    moves from forwarded to dropped."""
    self._acc.unforward(subject, priority, role)
    self._acc.drop(subject, reason, role)
    if priority >= CRITICAL:
        self._count_critical_drop(reason)


# -- outcomes the shell reports ------------------------------------------------------------------------
def settle(self: Engine, item: Any) -> None:
    # An item handed out for shutdown was received already; anything else (e.g. BLOCK) was not.
    if self._handed.pop(id(item), None) is None:
        self._acc.receive(item.priority, item.role)


def note_forwarded(self: Engine, item: Item) -> None:
    """The shell forwarded a message the engine had not counted (BLOCK, shutdown hand-off)."""
    settle(self, item)
    self._acc.forward(item.subject, item.priority, item.role)


def note_dropped(self: Engine, item: Item, reason: str) -> None:
    """The shell dropped a message the engine had not counted (BLOCK, shutdown hand-off)."""
    settle(self, item)
    self._acc.drop(item.subject, reason, item.role)
    if item.priority >= CRITICAL:
        self._count_critical_drop(reason)


def note_spooled(self: Engine, item: Item) -> None:
    """The shell spooled to disk a message the engine had not counted (BLOCK, shutdown hand-off)."""
    settle(self, item)
    self._acc.spooled += 1


def unspool(self: Engine) -> None:
    acc = self._acc
    if acc.spooled > 0:
        acc.spooled -= 1
    else:
        # Spooled by a previous process: received now, for this process's books.
        acc.receive(CRITICAL)


def note_unspooled(self: Engine, item: Item) -> None:
    """A spooled message was replayed upstream: it moves from spooled to forwarded."""
    unspool(self)
    self._acc.forward(item.subject, item.priority, item.role)


def note_spool_dropped(self: Engine, item: Item, reason: str) -> None:
    """A spooled message was lost (spool full, corrupt, expired): it moves from spooled to dropped."""
    unspool(self)
    self._acc.drop(item.subject, reason, item.role)
    if item.priority >= CRITICAL:
        self._count_critical_drop(reason)


def observe_latency(self: Engine, subject: str, seconds: float, role: Role = DATA, count: int = 1) -> None:
    """Time a message (or `count`) spent in the sidecar before its upstream write (latency histogram)."""
    self._acc.observe_latency(subject, seconds, role, count)
