"""The engine's bounded queue: one FIFO per lane, popped highest lane first, evicting the lowest lane first.

A lane is a (priority, role) class. From the top: critical (any role); replies and control messages of any
lower priority (they finish admitted work); then for high, medium and low, requests ahead of data:

    8 critical | 7 reply/control | 6 high request | 5 high data | 4 medium request | 3 medium data
    2 low request | 1 low data

The reply/control lane and the critical lane are never evicted.

A lane holds items (one message each) and `QueuedRun`s (many messages of one run, kept compactly, made
into items one at a time as they leave). Sizes, counts and evictions are per message either way.
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


# What `QueuedRun.slice_of(i, j)` gives for messages i..j-1: the shell's item for them, and their groups
# (subject, count, priority, role) for the counters.
Slice = tuple[Any, list[tuple[str, int, Priority, Role]]]


class RunSlice:
    """Several messages of a QueuedRun leaving the queue together (take()): `item` the shell's (their
    frames, one buffer), `groups` (subject, count, priority, role), `n` messages, `size` bytes."""

    __slots__ = ("groups", "item", "n", "size")

    def __init__(self, item: Any, groups: list[tuple[str, int, Priority, Role]], n: int, size: int) -> None:
        self.item = item
        self.groups = groups
        self.n = n
        self.size = size


class QueuedRun:
    """Messages `head..end-1` of one run, all of one lane: their sizes, and `make(i)`, which builds message
    i as a queue item (the shell keeps the frames: one shared buffer and offsets, not one object each);
    `slice_of(i, j)`, when given, makes messages i..j-1 one item (they leave together: `take_slice`)."""

    __slots__ = ("end", "head", "make", "nbytes", "sizes", "slice_of")

    def __init__(
        self, make: Callable[[int], Any], sizes: Any, slice_of: Callable[[int, int], Slice] | None = None
    ) -> None:
        self.make = make
        self.slice_of = slice_of
        self.sizes = sizes
        self.head = 0
        self.end = len(sizes)
        self.nbytes = sum(sizes)

    def take_slice(self, k: int) -> RunSlice:
        """Messages head..head+k-1 (at most what is left) as one RunSlice; the run keeps the rest."""
        assert self.slice_of is not None
        i = self.head
        j = min(self.end, i + k)
        size = sum(self.sizes[i:j])
        self.head = j
        self.nbytes -= size
        item, groups = self.slice_of(i, j)
        return RunSlice(item, groups, j - i, size)

    def __len__(self) -> int:
        return self.end - self.head

    def popleft(self) -> Any:
        """Message `head` as an item; the run keeps the rest."""
        i = self.head
        self.head = i + 1
        self.nbytes -= self.sizes[i]
        return self.make(i)

    def items(self) -> list[Any]:
        """Every message left, as items (the run is then empty)."""
        out = [self.make(i) for i in range(self.head, self.end)]
        self.head = self.end
        self.nbytes = 0
        return out


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
    A `QueuedRun` (push_run) counts as its messages everywhere; what leaves it leaves as items.
    """

    __slots__ = ("_by_priority", "_counts", "_items", "_prios", "_times", "nbytes", "size")

    def __init__(self) -> None:
        # Indexed by lane; index 0 is unused so that `_items[lane]` needs no arithmetic.
        self._items: list[deque[Any]] = [deque() for _ in range(LANES + 1)]
        self._times: list[deque[float]] = [deque() for _ in range(LANES + 1)]
        # The finish lane mixes priorities: theirs, in step with its items.
        self._prios: deque[Priority] = deque()
        self._by_priority = [0] * (len(Priority) + 1)
        # Messages per lane (a QueuedRun counts as its messages).
        self._counts = [0] * (LANES + 1)
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
        self._counts[lane] += 1
        self.size += 1
        self.nbytes += item.size

    def push_run(self, run: QueuedRun, lane: int, now: float) -> None:
        """Append the messages of `run` (not empty) to `lane` (below the finish lane: data and requests),
        queued at `now`."""
        assert 0 < lane < FINISH_LANE and len(run)
        self._items[lane].append(run)
        self._times[lane].append(now)
        n = len(run)
        self._by_priority[(lane + 1) // 2] += n
        self._counts[lane] += n
        self.size += n
        self.nbytes += run.nbytes

    def _popleft(self, lane: int) -> Any:
        head = self._items[lane][0]
        if type(head) is QueuedRun:
            size = head.sizes[head.head]
            item = head.popleft()
            if not head:
                self._items[lane].popleft()
                self._times[lane].popleft()
            self._by_priority[(lane + 1) // 2] -= 1
            self._counts[lane] -= 1
            self.size -= 1
            self.nbytes -= size
            return item
        self._times[lane].popleft()
        item = self._items[lane].popleft()
        if lane == FINISH_LANE:
            priority = self._prios.popleft()
        elif lane == CRITICAL_LANE:
            priority = Priority.CRITICAL
        else:
            priority = (lane + 1) // 2
        self._by_priority[priority] -= 1
        self._counts[lane] -= 1
        self.size -= 1
        self.nbytes -= item.size
        return item

    def _popleft_many(self, lane: int, k: int) -> Any:
        """Up to `k` messages from the head of `lane`: a RunSlice of the QueuedRun there when it can make
        one and more than one message is asked for and left, else one item (_popleft)."""
        head = self._items[lane][0]
        if type(head) is not QueuedRun or k < 2 or len(head) < 2 or head.slice_of is None:
            return self._popleft(lane)
        piece = head.take_slice(k)
        if not head:
            self._items[lane].popleft()
            self._times[lane].popleft()
        n = piece.n
        self._by_priority[(lane + 1) // 2] -= n
        self._counts[lane] -= n
        self.size -= n
        self.nbytes -= piece.size
        return piece

    def pop_many(self, k: int, below: int = LANES + 1) -> Any:
        """pop() (or pop_below(below)), but up to `k` messages of a QueuedRun at the head leave as one
        RunSlice (the queue is not empty below `below`)."""
        items = self._items
        for lane in _LANES_DESC:
            if lane < below and items[lane]:
                return self._popleft_many(lane, k)
        raise IndexError(f"pop_many({k}, {below}): no item")

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
        self._counts[lane] += 1
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
        """Messages queued in `lane`."""
        return self._counts[lane]

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

    def remove_if(self, predicate: Callable[[Any], bool], runs: bool = True) -> list[Any]:
        """Remove and return every item matching `predicate` (highest lane first, FIFO within).

        A QueuedRun is tested message by message: kept whole when none matches, else what does not match
        stays as items, in order, with the run's time. `runs=False`: the caller knows that no message of
        a QueuedRun matches (they are data below critical): runs are kept whole, untested."""
        removed: list[Any] = []
        for lane in _LANES_DESC:
            items = self._items[lane]
            if not items:
                continue
            times = self._times[lane]
            prios = self._prios if lane == FINISH_LANE else None
            lane_priority = Priority.CRITICAL if lane == CRITICAL_LANE else (lane + 1) // 2
            kept: list[tuple[Any, float, Priority]] = []
            for i, (item, stamp) in enumerate(zip(items, times, strict=True)):
                if type(item) is QueuedRun:
                    if not runs:
                        kept.append((item, stamp, lane_priority))
                        continue
                    messages = [item.make(j) for j in range(item.head, item.end)]
                    matched = [predicate(message) for message in messages]
                    if not any(matched):
                        kept.append((item, stamp, lane_priority))
                        continue
                    for message, match in zip(messages, matched, strict=True):
                        if match:
                            removed.append(message)
                        else:
                            kept.append((message, stamp, lane_priority))
                    continue
                priority = prios[i] if prios is not None else lane_priority
                if predicate(item):
                    removed.append(item)
                else:
                    kept.append((item, stamp, priority))
            # Take the lane out of the counts, then put back what stays.
            self._drop_lane(lane)
            for item, stamp, priority in kept:
                items.append(item)
                times.append(stamp)
                if type(item) is QueuedRun:
                    n = len(item)
                    self._by_priority[priority] += n
                    self._counts[lane] += n
                    self.size += n
                    self.nbytes += item.nbytes
                    continue
                if prios is not None:
                    prios.append(priority)
                self._by_priority[priority] += 1
                self._counts[lane] += 1
                self.size += 1
                self.nbytes += item.size
        return removed

    def _drop_lane(self, lane: int) -> None:
        """Empty `lane` and take its messages out of the counts."""
        items = self._items[lane]
        if lane == FINISH_LANE:
            for priority in self._prios:
                self._by_priority[priority] -= 1
            self._prios.clear()
        else:
            self._by_priority[Priority.CRITICAL if lane == CRITICAL_LANE else (lane + 1) // 2] -= (
                self._counts[lane]
            )
        for item in items:
            self.nbytes -= item.nbytes if type(item) is QueuedRun else item.size
        self.size -= self._counts[lane]
        self._counts[lane] = 0
        items.clear()
        self._times[lane].clear()

    def pop_all(self) -> list[Any]:
        """Remove and return everything, highest lane first, FIFO within a lane."""
        out: list[Any] = []
        for lane in _LANES_DESC:
            for item in self._items[lane]:
                if type(item) is QueuedRun:
                    out.extend(item.items())
                else:
                    out.append(item)
            # New deques rather than clear(): a large queue's memory goes back with the old ones.
            self._items[lane] = deque()
            self._times[lane] = deque()
        self._prios = deque()
        self._by_priority = [0] * (len(Priority) + 1)
        self._counts = [0] * (LANES + 1)
        self.size = 0
        self.nbytes = 0
        return out

    def __iter__(self) -> Iterator[Any]:
        """Every message queued, as items (a QueuedRun's made for the occasion), in pop order."""
        for lane in _LANES_DESC:
            for item in self._items[lane]:
                if type(item) is QueuedRun:
                    for i in range(item.head, item.end):
                        yield item.make(i)
                else:
                    yield item
