"""A run of data the engine cannot write now, queued in bulk (`Engine.queue_run`): its frames scanned once
(`scan_run`) and kept per lane in one buffer with offsets (`QueuedFrames`, `queued_runs`), each message
made into the OutMsg the per-message path would have queued only as it leaves the queue.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Any

from policies.config import PolicyRule, Priority
from policies.queue import QueuedRun, Slice
from policies.roles import DATA
from proxy.nats import speedups
from proxy.nats.parser import _header_priority
from proxy.pipeline.message import OutMsg
from proxy.pipeline.runs import RunGroups, _wire

# The C scanner when built; its uint32 and uint16 arrays are those of array("I") and array("H").
_scan_groups = speedups.scan_groups if array("I").itemsize == 4 and array("H").itemsize == 2 else None


class QueuedFrames:
    """The frames of a run's messages queued in one lane: one buffer, offsets into it (message i is
    `buf[offsets[i]:offsets[i + 1]]`), and the group of each (an index into `metas`, when there are
    several); `make(i)` builds message i as the OutMsg the per-message path would have queued."""

    __slots__ = ("buf", "client", "groups", "metas", "offsets", "received_at", "sizes")

    def __init__(
        self,
        buf: bytes,
        offsets: array[int],
        sizes: array[int],
        groups: array[int] | None,
        metas: list[tuple[str, Priority, PolicyRule | None]],
        client: Any,
        received_at: float,
    ) -> None:
        self.buf = buf
        self.offsets = offsets
        self.sizes = sizes
        self.groups = groups
        self.metas = metas
        self.client = client
        self.received_at = received_at

    def make(self, i: int) -> OutMsg:
        groups = self.groups
        subject, priority, rule = self.metas[groups[i] if groups is not None else 0]
        offsets = self.offsets
        frame = self.buf[offsets[i] : offsets[i + 1]]
        return OutMsg(
            subject, None, priority, self.sizes[i], frame, self.client, self.received_at, rule, DATA
        )

    def slice(self, i: int, j: int) -> Slice:
        """Messages i..j-1 as one QueuedSlice, and their groups (subject, count, priority, role)."""
        metas = self.metas
        groups = self.groups
        if groups is None:
            subject, priority, _ = metas[0]
            counted = [(subject, j - i, priority, DATA)]
        else:
            counted = [(metas[g][0], k, metas[g][1], DATA) for g, k in Counter(groups[i:j]).items()]
        counts: dict[str, int] = {}
        for subject, k, _, _ in counted:
            counts[subject] = counts.get(subject, 0) + k
        offsets = self.offsets
        frames = self.buf[offsets[i] : offsets[j]]
        return QueuedSlice(frames, counts, self.client, self.received_at), counted


class QueuedSlice:
    """Messages of a QueuedFrames leaving the queue together: their frames (one buffer), count per
    subject (the journal's RunEntry), the client that sent them and when they were received."""

    __slots__ = ("client", "counts", "frames", "received_at")

    def __init__(self, frames: bytes, counts: dict[str, int], client: Any, received_at: float) -> None:
        self.frames = frames
        self.counts = counts
        self.client = client
        self.received_at = received_at


Scanned = tuple["array[int]", "array[int]", "array[int]"]


def scan_run(frames: bytes, found: RunGroups, max_payload: int) -> Scanned | None:
    """Each publish of a run of data (no reply subjects): where its frame starts, its size, and its
    group in `found`; None when one is over `max_payload` or not plain data (the per-message path).
    In C (`scan_groups`) when built, else `scan_run_py`."""
    if _scan_groups is None:
        return scan_run_py(frames, found, max_payload)
    keys = [
        (_wire(subject), code, g)
        for g, group_keys in enumerate(found.keys)
        for subject, code, request in group_keys
        if not request
    ]
    scanned = _scan_groups(frames, keys, max_payload)
    if scanned is None:
        return None
    starts, sizes, which = array("I"), array("I"), array("H")
    starts.frombytes(scanned[0])
    sizes.frombytes(scanned[1])
    which.frombytes(scanned[2])
    return starts, sizes, which


def scan_run_py(frames: bytes, found: RunGroups, max_payload: int) -> Scanned | None:
    """scan_run in Python: the reference of the C scan_groups."""
    groups: dict[tuple[bytes, int], int] = {}
    for g, keys in enumerate(found.keys):
        for subject, code, request in keys:
            if not request:
                groups[(_wire(subject), code)] = g
    starts = array("I")
    sizes = array("I")
    which = array("H")
    pos = 0
    end = len(frames)
    find = frames.find
    while pos < end:
        eol = find(b"\r\n", pos)
        parts = frames[pos:eol].split()
        size = int(parts[-1])
        if parts[0] == b"HPUB":
            if len(parts) != 4:
                return None
            hdr = int(parts[2])
            code = _header_priority(frames, eol + 2, hdr)
        else:
            if len(parts) != 3:
                return None
            code = 0
        g = groups.get((parts[1], code))
        if g is None or size > max_payload:
            return None
        starts.append(pos)
        sizes.append(size)
        which.append(g)
        pos = eol + 2 + size + 2
    return starts, sizes, which


def queued_runs(
    frames: bytes,
    scanned: Scanned,
    found: RunGroups,
    lanes: list[int],
    keep: bytearray | None,
    client: Any,
    now: float,
) -> list[tuple[int, QueuedRun]]:
    """The run's messages in the lanes the engine gave their groups (0: shed), those `keep` marks (None:
    all), one QueuedRun per lane with any, in run order within each: the run's own buffer when one lane
    takes it all, else a copy per lane."""
    starts, sizes, which = scanned
    metas = [
        (subject, priority, rule)
        for (subject, _, priority, _), rule in zip(found.groups, found.rules, strict=True)
    ]
    used = {lane for lane in lanes if lane}
    if len(used) == 1 and all(lanes) and keep is None:
        (lane,) = used
        offsets = array("I", starts)
        offsets.append(len(frames))
        single = len(metas) == 1
        held = QueuedFrames(
            frames,
            offsets,
            sizes,
            None if single else array("B" if len(metas) < 256 else "H", which),
            metas,
            client,
            now,
        )
        return [(lane, QueuedRun(held.make, sizes, held.slice))]
    out: list[tuple[int, QueuedRun]] = []
    n = len(starts)
    for lane in sorted(used):
        lane_groups = [g for g, group_lane in enumerate(lanes) if group_lane == lane]
        local = {g: i for i, g in enumerate(lane_groups)}
        parts: list[bytes] = []
        offsets = array("I", [0])
        lane_sizes = array("I")
        lane_which = array("B" if len(lane_groups) < 256 else "H")
        at = 0
        for i in range(n):
            g = which[i]
            j = local.get(g)
            if j is None or (keep is not None and not keep[i]):
                continue
            stop = starts[i + 1] if i + 1 < n else len(frames)
            parts.append(frames[starts[i] : stop])
            at += stop - starts[i]
            offsets.append(at)
            lane_sizes.append(sizes[i])
            lane_which.append(j)
        if not lane_sizes:
            continue  # all sampled out
        lane_metas = [metas[g] for g in lane_groups]
        held = QueuedFrames(
            b"".join(parts),
            offsets,
            lane_sizes,
            lane_which if len(lane_groups) > 1 else None,
            lane_metas,
            client,
            now,
        )
        out.append((lane, QueuedRun(held.make, lane_sizes, held.slice)))
    return out
