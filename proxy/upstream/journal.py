"""What was written upstream and is not yet covered by a PONG: the sidecar's exposure to a dead socket.

Core NATS has no acknowledgement, but a server answers in order: the PONG to a PING confirms that the
server read everything written before that PING. Bytes written after the last confirmed PING may be in
the kernel's buffers when the connection is declared dead (a frozen server never reads them), so the
upstream keeps them here, by the PING that will cover them, until a PONG confirms them. Critical
messages have their own confirmation (proxy/sidecar.py); this journal keeps the other publishes, as the
`OutMsg` the per-message path already has, or as a `RunEntry` for a run of plain PUBs the C fast path
wrote as one slice (one object per run, never one per message). Bounded by bytes: at the limit the
upstream counts as backed up (flow control), so nothing is written that could not be taken back.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class RunEntry:
    """A run of plain PUB/HPUB frames written as one slice, the client that sent it, its count per subject
    (the parser's), and how many of its messages to each subject the upstream refused (they are settled:
    never taken back)."""

    __slots__ = ("client", "counts", "frames", "refused")

    def __init__(self, client: Any, frames: bytes, counts: dict[str, int]) -> None:
        self.client = client
        self.frames = frames
        self.counts = counts
        self.refused: dict[str, int] | None = None


class _Segment:
    """Entries written while `ping` PINGs had been written on the connection (the next PING covers them)."""

    __slots__ = ("entries", "nbytes", "ping")

    def __init__(self, ping: int) -> None:
        self.ping = ping
        self.entries: list[Any] = []
        self.nbytes = 0


class WriteJournal:
    """Non-critical publishes written upstream since the PONG that last confirmed them, bounded by bytes."""

    __slots__ = ("_segments", "limit", "nbytes", "taken_back")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._segments: deque[_Segment] = deque()
        # Messages handed back after a lost connection, over the process's life (a metric).
        self.taken_back = 0

    @property
    def full(self) -> bool:
        """At the limit: nothing more may be written until a PONG confirms some of it."""
        return self.nbytes >= self.limit

    def add(self, entry: Any, nbytes: int, ping: int) -> int:
        """Record `entry` (`nbytes` on the wire) written after `ping` PINGs; returns the bytes not yet
        followed by a PING (the caller asks for one when they grow)."""
        segments = self._segments
        if segments and segments[-1].ping == ping:
            segment = segments[-1]
        else:
            segment = _Segment(ping)
            segments.append(segment)
        segment.entries.append(entry)
        segment.nbytes += nbytes
        self.nbytes += nbytes
        return segment.nbytes

    def confirm(self, pongs: int) -> None:
        """`pongs` PONGs received: everything written before PING number `pongs` is confirmed."""
        segments = self._segments
        while segments and segments[0].ping < pongs:
            self.nbytes -= segments.popleft().nbytes

    def entries(self) -> list[Any]:
        """Every unconfirmed entry, oldest first (read only)."""
        return [entry for segment in self._segments for entry in segment.entries]

    def remove(self, entry: Any, nbytes: int) -> None:
        """Forget one entry (the upstream refused it: it is settled, never taken back)."""
        for segment in self._segments:
            for i, candidate in enumerate(segment.entries):
                if candidate is entry:
                    del segment.entries[i]
                    segment.nbytes -= nbytes
                    self.nbytes -= nbytes
                    return

    def take_all(self) -> list[Any]:
        """The connection is gone: every unconfirmed entry, oldest first; the journal is empty after."""
        entries = self.entries()
        self._segments.clear()
        self.nbytes = 0
        return entries
