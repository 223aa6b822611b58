"""The engine's bounded queue: one FIFO per lane, popped highest lane first, evicting the lowest lane first.

A lane is a (priority, role) class. From the top: critical (any role); replies and control messages of any
lower priority (they finish admitted work); then for high, medium and low, requests ahead of data:

    8 critical | 7 reply/control | 6 high request | 5 high data | 4 medium request | 3 medium data
    2 low request | 1 low data

The reply/control lane and the critical lane are never evicted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

from policies.config import Priority
from policies.roles import REPLY, REQUEST, Role

CRITICAL_LANE: Final = 8
FINISH_LANE: Final = 7
LANES: Final = 8
_LANES_DESC = tuple(range(LANES, 0, -1))
# Lanes a newcomer may evict from, lowest first (never the finish lane, never critical).
_EVICTABLE = (1, 2, 3, 4, 5, 6)


def lane_of(priority: Priority, role: Role) -> int:
    """The lane of a message of (effective) `priority` and `role`."""
    if priority >= Priority.CRITICAL:
        return CRITICAL_LANE
    if role >= REPLY:
        return FINISH_LANE
    return 2 * priority - 1 + (role is REQUEST)


class PriorityQueue:
    """FIFO per lane with enqueue times; `size` and `nbytes` are plain ints kept for the hot path.

    Items need a `size` attribute (bytes). The capacity is the caller's business (the engine decides
    between evicting, dropping and blocking). Counts by priority are by the priority given to `push`.
    """

    __slots__ = ("_by_priority", "_items", "_prios", "_times", "nbytes", "size")

    def __init__(self) -> None:
        # Indexed by lane; index 0 is unused so that `_items[lane]` needs no arithmetic.
        self._items: list[deque[Any]] = [deque() for _ in range(LANES + 1)]
        self._times: list[deque[float]] = [deque() for _ in range(LANES + 1)]
        # The finish lane mixes priorities: theirs, in step with its items.
        self._prios: deque[Priority] = deque()
        self._by_priority = [0] * (len(Priority) + 1)
        self.size = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return self.size

    def push(self, item: Any, priority: Priority, now: float, role: Role = Role.DATA) -> None:
        """Append `item` to the FIFO of its lane, remembering when it was queued."""
        lane = lane_of(priority, role)
        self._items[lane].append(item)
        self._times[lane].append(now)
        if lane == FINISH_LANE:
            self._prios.append(priority)
        self._by_priority[priority] += 1
        self.size += 1
        self.nbytes += item.size

    def _popleft(self, lane: int) -> Any:
        self._times[lane].popleft()
        item = self._items[lane].popleft()
        if lane == FINISH_LANE:
            priority = self._prios.popleft()
        elif lane == CRITICAL_LANE:
            priority = Priority.CRITICAL
        else:
            priority = (lane + 1) // 2
        self._by_priority[priority] -= 1
        self.size -= 1
        self.nbytes -= item.size
        return item

    def push_front(self, item: Any, priority: Priority, now: float, role: Role = Role.DATA) -> None:
        """Put `item` back at the head of its lane (it was received before what is queued there)."""
        lane = lane_of(priority, role)
        times = self._times[lane]
        # Keep each lane's times in order: the head's time is the oldest.
        self._items[lane].appendleft(item)
        times.appendleft(min(now, times[0]) if times else now)
        if lane == FINISH_LANE:
            self._prios.appendleft(priority)
        self._by_priority[priority] += 1
        self.size += 1
        self.nbytes += item.size

    def pop(self) -> Any:
        """Remove and return the oldest item of the highest non-empty lane (the queue is not empty)."""
        items = self._items
        for lane in _LANES_DESC:
            if items[lane]:
                return self._popleft(lane)
        raise IndexError("pop from an empty PriorityQueue")

    def pop_below(self, lane: int) -> Any:
        """Remove and return the oldest item of the highest non-empty lane below `lane` (there is one)."""
        items = self._items
        for lower in _LANES_DESC:
            if lower < lane and items[lower]:
                return self._popleft(lower)
        raise IndexError(f"pop_below({lane}): no item below that lane")

    def pop_lane(self, lane: int) -> Any | None:
        """Remove and return the oldest item of `lane`, or None when it is empty."""
        return self._popleft(lane) if self._items[lane] else None

    def lane_size(self, lane: int) -> int:
        """Items queued in `lane`."""
        return len(self._items[lane])

    @property
    def has_requests(self) -> bool:
        """True while a request waits in any lane below critical."""
        items = self._items
        return bool(items[2] or items[4] or items[6])

    def evict_below(self, lane: int) -> Any | None:
        """Remove and return the oldest item of the lowest evictable lane strictly below `lane`, if any."""
        items = self._items
        for lower in _EVICTABLE:
            if lower >= lane:
                return None
            if items[lower]:
                return self._popleft(lower)
        return None

    def oldest_time(self) -> float | None:
        """When the oldest queued item (of any lane) was queued, or None when empty."""
        oldest: float | None = None
        for times in self._times:
            if times and (oldest is None or times[0] < oldest):
                oldest = times[0]
        return oldest

    def oldest_time_of(self, lane: int) -> float | None:
        """When the oldest item of `lane` was queued, or None when it is empty."""
        times = self._times[lane]
        return times[0] if times else None

    def size_of(self, priority: Priority) -> int:
        """Number of items queued at `priority` (as given to `push`)."""
        return self._by_priority[priority]

    def remove_if(self, predicate: Callable[[Any], bool]) -> list[Any]:
        """Remove and return every item matching `predicate` (highest lane first, FIFO within)."""
        removed: list[Any] = []
        for lane in _LANES_DESC:
            if not self._items[lane]:
                continue
            kept: list[tuple[Any, float, Priority | None]] = []
            prios = self._prios if lane == FINISH_LANE else None
            while self._items[lane]:
                priority = prios[0] if prios is not None else None
                stamp = self._times[lane][0]
                item = self._popleft(lane)
                if predicate(item):
                    removed.append(item)
                else:
                    kept.append((item, stamp, priority))
            for item, stamp, priority in kept:
                self._items[lane].append(item)
                self._times[lane].append(stamp)
                if prios is not None and priority is not None:
                    prios.append(priority)
                    self._by_priority[priority] += 1
                else:
                    self._by_priority[Priority.CRITICAL if lane == CRITICAL_LANE else (lane + 1) // 2] += 1
                self.size += 1
                self.nbytes += item.size
        return removed

    def pop_all(self) -> list[Any]:
        """Remove and return everything, highest lane first, FIFO within a lane."""
        out: list[Any] = []
        for lane in _LANES_DESC:
            out.extend(self._items[lane])
            # New deques rather than clear(): a large queue's memory goes back with the old ones.
            self._items[lane] = deque()
            self._times[lane] = deque()
        self._prios = deque()
        self._by_priority = [0] * (len(Priority) + 1)
        self.size = 0
        self.nbytes = 0
        return out

    def __iter__(self) -> Iterator[Any]:
        for lane in _LANES_DESC:
            yield from self._items[lane]
