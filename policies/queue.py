"""The engine's bounded queue: one FIFO per priority, popped highest priority first, evicting lowest first."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from policies.config import Priority

_PRIORITIES_DESC = tuple(sorted(Priority, reverse=True))
_PRIORITIES_ASC = tuple(sorted(Priority))


class PriorityQueue:
    """FIFO per priority with enqueue times; `size` and `nbytes` are plain ints kept for the hot path.

    Items need a `size` attribute (bytes). The capacity is the caller's business (the engine decides
    between evicting, dropping and blocking).
    """

    __slots__ = ("_items", "_times", "nbytes", "size")

    def __init__(self) -> None:
        # Indexed by Priority value; index 0 is unused so that `_items[priority]` needs no arithmetic.
        self._items: list[deque[Any]] = [deque() for _ in range(len(Priority) + 1)]
        self._times: list[deque[float]] = [deque() for _ in range(len(Priority) + 1)]
        self.size = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return self.size

    def push(self, item: Any, priority: Priority, now: float) -> None:
        """Append `item` to the FIFO of `priority`, remembering when it was queued."""
        self._items[priority].append(item)
        self._times[priority].append(now)
        self.size += 1
        self.nbytes += item.size

    def pop(self) -> Any:
        """Remove and return the oldest item of the highest non-empty priority (the queue is not empty)."""
        for priority in _PRIORITIES_DESC:
            items = self._items[priority]
            if items:
                self._times[priority].popleft()
                self.size -= 1
                item = items.popleft()
                self.nbytes -= item.size
                return item
        raise IndexError("pop from an empty PriorityQueue")

    def evict_below(self, priority: Priority) -> Any | None:
        """Remove and return the oldest item of the lowest priority strictly below `priority`, if any."""
        for lower in _PRIORITIES_ASC:
            if lower >= priority:
                return None
            items = self._items[lower]
            if items:
                self._times[lower].popleft()
                self.size -= 1
                item = items.popleft()
                self.nbytes -= item.size
                return item
        return None

    def oldest_time(self) -> float | None:
        """When the oldest queued item (of any priority) was queued, or None when empty."""
        oldest: float | None = None
        for times in self._times:
            if times and (oldest is None or times[0] < oldest):
                oldest = times[0]
        return oldest

    def oldest_time_of(self, priority: Priority) -> float | None:
        """When the oldest queued item of `priority` was queued, or None when it has none."""
        times = self._times[priority]
        return times[0] if times else None

    def size_of(self, priority: Priority) -> int:
        """Number of items queued at `priority`."""
        return len(self._items[priority])

    def remove_if(self, predicate: Callable[[Any], bool]) -> list[Any]:
        """Remove and return every item matching `predicate` (highest priority first, FIFO within)."""
        removed: list[Any] = []
        for priority in _PRIORITIES_DESC:
            items = self._items[priority]
            if not items:
                continue
            times = self._times[priority]
            kept_items: deque[Any] = deque()
            kept_times: deque[float] = deque()
            for item, stamp in zip(items, times, strict=True):
                if predicate(item):
                    removed.append(item)
                else:
                    kept_items.append(item)
                    kept_times.append(stamp)
            self._items[priority] = kept_items
            self._times[priority] = kept_times
        self.size -= len(removed)
        self.nbytes -= sum(item.size for item in removed)
        return removed

    def pop_all(self) -> list[Any]:
        """Remove and return everything, highest priority first, FIFO within a priority."""
        out: list[Any] = []
        for priority in _PRIORITIES_DESC:
            out.extend(self._items[priority])
            self._items[priority].clear()
            self._times[priority].clear()
        self.size = 0
        self.nbytes = 0
        return out

    def __iter__(self) -> Iterator[Any]:
        for priority in _PRIORITIES_DESC:
            yield from self._items[priority]
