"""One bound on the bytes waiting to be written to all applications together.

Each application connection is cut at `clients.maxPendingBytes` (like nats-server's `max_pending`), but
many slow readers under that limit can together hold more memory than the process may use. This budget
adds up what each connection reported at its last flush and, past `clients.maxTotalPendingBytes`
(default: a quarter of `maxMemoryUsageMB`), cuts the connection with the most pending first, as a slow
consumer, until the total is back under the bound. CPython's allocator keeps freed buffers, so after a
cut the freed memory is handed back to the system (glibc `malloc_trim`), which lets the memory signal,
and thus the degradation level, recover.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

TRIM_DELAY_S = 0.2


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim): freed memory is reused, not returned
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def return_freed_memory() -> None:
    """Hand the memory the allocator keeps after large buffers are freed back to the system (glibc's
    `malloc_trim`; nothing elsewhere)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class OutboundBudget:
    """Bytes pending to applications, in total; cuts the slowest consumer when the bound is passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: Callable[[], int]) -> None:
        self.loop = loop
        self._limit = limit
        self.total = 0
        self.cuts = 0
        self._pending: set[Any] = set()
        self._trim: asyncio.TimerHandle | None = None
        # Told of each flush that leaves bytes waiting (or none any more): the delivery flow's hook.
        self.on_pending: Callable[[Any, int], None] | None = None

    @property
    def waiting(self) -> set[Any]:
        """The connections with bytes waiting at their last flush or recount."""
        return self._pending

    @property
    def limit(self) -> int:
        """The bound in force (it follows maxMemoryUsageMB when not configured)."""
        return self._limit()

    def update(self, client: Any, size: int) -> None:
        """`client` has `size` bytes waiting after its flush."""
        self.total += size - client.reported_pending
        client.reported_pending = size
        if size:
            self._pending.add(client)
        else:
            self._pending.discard(client)
        if self.total > self.limit:
            self._enforce()
        if self.on_pending is not None:
            self.on_pending(client, size)

    def forget(self, client: Any) -> None:
        """The connection is gone: its bytes no longer count."""
        if client.reported_pending:
            self.total -= client.reported_pending
            client.reported_pending = 0
        self._pending.discard(client)

    def recount(self) -> None:
        """Read every pending connection's buffer again (a buffer drains between flushes)."""
        total = 0
        for client in list(self._pending):
            transport = client.transport
            size = transport.get_write_buffer_size() if transport is not None and not client.closed else 0
            client.reported_pending = size
            if size:
                total += size
            else:
                self._pending.discard(client)
        self.total = total

    def _enforce(self) -> None:
        self.recount()
        limit = self.limit
        while self.total > limit and self._pending:
            slowest = max(self._pending, key=lambda c: c.reported_pending)
            log.warning(
                "client %s (%s) is the slowest consumer with %d bytes pending while all applications "
                "together have %d (limit %d): disconnecting",
                slowest.client_id,
                slowest.name,
                slowest.reported_pending,
                self.total,
                limit,
            )
            self.cuts += 1
            self.forget(slowest)
            slowest.cut_slow_consumer()

    def release_memory(self) -> None:
        """After a slow consumer's buffers are freed: return the freed memory to the system, soon (once
        the transport has dropped its buffer), at most once per delay."""
        if _MALLOC_TRIM is None or self._trim is not None:
            return
        self._trim = self.loop.call_later(TRIM_DELAY_S, self._do_trim)

    def _do_trim(self) -> None:
        self._trim = None
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)
