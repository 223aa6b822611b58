"""A run of publishes (`PubRun`) as the groups the engine decides on, and the frames it keeps.

The parser counts a run's frames per subject, per subject with a reply (requests) and per (subject,
KPI-Priority code, request). `run_groups` turns those counts into the engine's groups (subject, count,
priority, role), classifying each subject once per run, with the header's priority where there is one;
the engine decides each group at once (`Engine.forward_batch` at level none, `Engine.decide_run` when it
sheds or samples), and `select_frames` copies the frames it keeps into one buffer: in C
(`proxy.nats._speedups.select_frames`), or in Python here (`select_frames_py`, the reference the tests
compare it with).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from policies.config import BatchMode, PolicyRule, Priority
from policies.roles import DATA, REPLY, REQUEST, Role, subject_role
from policies.sampling import APART, PARKED, REFUSED, SHARE_ONE, keeps, kept_of
from proxy.nats import speedups
from proxy.nats.parser import _header_priority
from proxy.nats.protocol import (
    PRIORITY_LABELS,
    ClientParser,
    Pub,
    PubRun,
    add_header,
    encode_pub,
    header_value,
)

CRITICAL: Final = Priority.CRITICAL
ENVELOPE: Final = BatchMode.ENVELOPE

Group = tuple[str, int, Priority, Role]
# What select_frames matches each frame by: its subject, KPI-Priority code, and reply (0/1); the subject
# is encoded to wire bytes only when a plan is made (plan_entries).
Key = tuple[str, int, int]
Classify = Callable[[str, "str | None", bool], tuple[Priority, "PolicyRule | None"]]


# A select_frames entry for every frame no other entry names: the frames of the spread groups.
ANY_FRAME: Final = (b"", -1, -1)


class RunGroups:
    """The groups of one run, the frame keys each covers, and whether any is critical or enveloped.

    The reply and control subjects of a run below critical (each reply has its own inbox subject) are
    one group per (priority, role, rule), not one per subject: the engine keeps them all (they finish
    admitted work) and counts them per role, never per subject. Such a group of several subjects is
    *spread*: its subjects and their counts in `spread`, its keys empty (select_frames matches its
    frames by ANY_FRAME), so a responder's run of 1,000 replies is a few groups, not 1,000."""

    __slots__ = ("_finishing", "critical", "enveloped", "groups", "keys", "rules", "spread")

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.keys: list[tuple[Key, ...]] = []
        self.rules: list[PolicyRule | None] = []
        self.critical = False
        self.enveloped = False
        # Spread groups: index -> count per subject; the finishing groups by (priority, role, rule).
        self.spread: dict[int, dict[str, int]] = {}
        self._finishing: dict[tuple[Priority, Role, int], int] = {}

    def add_finishing(
        self, subject: str, count: int, priority: Priority, role: Role, rule: PolicyRule | None
    ) -> None:
        """A reply or control subject's messages (no KPI-Priority header): in its run's finishing group of
        (priority, role, rule), critical ones in their own (they are set apart, by subject)."""
        keys = ((subject, 0, 0), (subject, 0, 1))
        if priority is CRITICAL:
            self.add((subject, count, priority, role), keys, rule)
            return
        at = self._finishing.get((priority, role, id(rule)))
        if at is None:
            self._finishing[(priority, role, id(rule))] = len(self.groups)
            self.add((subject, count, priority, role), keys, rule)
            return
        first, total, _, _ = self.groups[at]
        self.groups[at] = (first, total + count, priority, role)
        spread = self.spread.get(at)
        if spread is None:
            spread = self.spread[at] = {first: total}
            self.keys[at] = ()
        spread[subject] = spread.get(subject, 0) + count

    @property
    def all_critical(self) -> bool:
        """Every message of the run is critical."""
        return all(group[2] is CRITICAL for group in self.groups)

    @property
    def critical_count(self) -> int:
        """How many of the run's messages are critical."""
        return sum(group[1] for group in self.groups if group[2] is CRITICAL)

    def add(self, group: Group, keys: tuple[Key, ...], rule: PolicyRule | None) -> None:
        self.groups.append(group)
        self.keys.append(keys)
        self.rules.append(rule)
        if group[2] is CRITICAL:
            self.critical = True
        if rule is not None and rule.batch_mode is ENVELOPE:
            self.enveloped = True

    def plan_entries(self, plan: list[tuple[int, int]]) -> list[tuple[bytes, int, int, int, int]]:
        """The engine's (share, phase) per group as select_frames takes them: one entry per frame key.

        Only a reply or control subject's group covers two keys (with and without a reply subject), and
        the engine never samples those (share 0, SHARE_ONE, APART or REFUSED): a sampled group is one
        key, so its kept count is the selection's over that key alone."""
        assert all(
            len(keys) == 1 or share in (0, SHARE_ONE, APART, REFUSED)
            for keys, (share, _) in zip(self.keys, plan, strict=True)
        ), "a sampled group has a single key"
        entries = [
            (_wire(subject), code, request, APART if share == PARKED else share, phase)
            for keys, (share, phase) in zip(self.keys, plan, strict=True)
            for subject, code, request in keys
        ]
        if self.spread:
            # The engine keeps replies and control messages below critical (decide_run).
            assert all(plan[at] == (SHARE_ONE, 0) for at in self.spread), "a spread group is kept whole"
            entries.append((*ANY_FRAME, SHARE_ONE, 0))
        return entries

    def apart_subjects(
        self, plan: list[tuple[int, int]]
    ) -> dict[bytes, tuple[str, PolicyRule | None, Role]] | None:
        """The subjects of the groups the plan sets apart (critical), by wire bytes, with their rule and
        role; None when one subject has two roles (the per-message path tells them apart)."""
        apart: dict[bytes, tuple[str, PolicyRule | None, Role]] = {}
        for (subject, _, _, role), (share, _), rule in zip(self.groups, plan, self.rules, strict=True):
            if share == PARKED:
                return None  # offered one by one (_write_critical)
            if share == APART:
                wire = _wire(subject)
                seen = apart.get(wire)
                if seen is not None and seen[2] is not role:
                    return None
                apart[wire] = (subject, rule, role)
        return apart

    def kept_counts(self, plan: list[tuple[int, int]]) -> dict[str, int]:
        """Per subject, how many of the run's messages the plan keeps (the journal's counts)."""
        counts: dict[str, int] = {}
        spread = self.spread
        for at, ((subject, count, _, _), (share, phase)) in enumerate(zip(self.groups, plan, strict=True)):
            if at in spread:  # kept whole (plan_entries)
                for one, k in spread[at].items():
                    counts[one] = counts.get(one, 0) + k
                continue
            if share >= 0:  # APART and PARKED: written on their own, with their own confirmation
                k = kept_of(count, share, phase)
                if k:
                    counts[subject] = counts.get(subject, 0) + k
        return counts


def _role(subject: str, replies: Any, now: float) -> Role | None:
    """The role a subject gives by itself (reply and control prefixes, remembered inboxes), else None."""
    role = subject_role(subject)
    if role is None and replies and replies.contains(subject, now):
        return REPLY
    return role


def _wire(subject: str) -> bytes:
    return subject.encode("utf-8", "surrogateescape")


def run_groups(op: PubRun, classify: Classify, replies: Any, now: float) -> RunGroups:
    """The run's groups: per subject and header priority, requests apart from data (by role)."""
    out = RunGroups()
    requests = op.requests
    counts = op.counts
    if op.priorities:
        counts = dict(counts)
        requests = dict(requests)
        for (subject, code, request), k in op.priorities.items():
            role = _role(subject, replies, now)
            priority, rule = classify(subject, PRIORITY_LABELS[code], role is None)
            counts[subject] -= k
            if request:
                requests[subject] -= k
            if role is None:
                role = REQUEST if request else DATA
            out.add((subject, k, priority, role), ((subject, code, request),), rule)
    for subject, count in counts.items():
        if not count:
            continue
        role = _role(subject, replies, now)
        priority, rule = classify(subject, None, role is None)
        if role is not None:
            out.add_finishing(subject, count, priority, role, rule)
            continue
        asked = requests.get(subject, 0) if requests else 0
        if asked:
            out.add((subject, asked, priority, REQUEST), ((subject, 0, 1),), rule)
            count -= asked
        if count:
            out.add((subject, count, priority, DATA), ((subject, 0, 0),), rule)
    return out


Selected = tuple[bytes, bytes, list[bytes]]


def select_frames_py(frames: bytes, plan: list[tuple[bytes, int, int, int, int]]) -> Selected | None:
    """The frames of a run the plan keeps, those it sets apart, each in order, and the reply subjects of
    the requests it refuses (the C select_frames' reference): frame j of a key's group is kept when
    `keeps(j, share, phase)`; a REFUSED group's frames are not, their reply subjects are listed."""
    groups = {(subject, code, request): (share, phase) for subject, code, request, share, phase in plan}
    seen: dict[tuple[bytes, int, int], int] = {}
    parser = ClientParser(max_payload=-1)
    parser.headers = True  # HPUBs in a run were accepted already
    kept: list[bytes] = []
    apart: list[bytes] = []
    refused: list[bytes] = []
    for op in parser.feed_data(frames):
        if type(op) is not Pub:
            return None
        code = _header_priority(op.frame, op.body_start, op.hdr_size) if op.hdr_size > 0 else 0
        key = (_wire(op.subject), code, int(op.reply is not None))
        selection = groups.get(key)
        if selection is None and code >= 0:
            selection = groups.get(ANY_FRAME)
        if selection is None or code < 0:
            return None
        share, phase = selection
        j = seen.get(key, 0)
        seen[key] = j + 1
        if share == REFUSED:
            refused.append(_wire(op.reply))  # type: ignore[arg-type]
        elif share == APART:
            apart.append(op.frame)
        elif keeps(j, share, phase):
            kept.append(op.frame)
    return b"".join(kept), b"".join(apart), refused


def split_run(op: PubRun, k: int) -> tuple[PubRun, PubRun]:
    """The first `k` publishes of a run (0 < k < op.n) and the rest, each a PubRun as the parser makes it
    (its frames read again: counts per subject, requests, priorities)."""
    frames = op.frames
    pos = 0
    for _ in range(k):
        eol = frames.index(b"\r\n", pos)
        size = int(frames[pos:eol].split()[-1])  # PUB/HPUB: the last token is the total size
        pos = eol + 2 + size + 2
    return _run_of(frames[:pos]), _run_of(frames[pos:])


def _run_of(frames: bytes) -> PubRun:
    parser = ClientParser(max_payload=-1)
    parser.headers = True  # HPUBs in a run were accepted already
    parser.batch = True
    (op,) = parser.feed_data(frames)
    assert type(op) is PubRun, "the frames of a run read again are a run"
    return op


Stamped = list[tuple[bytes, bytes, int]]


def stamp_critical_py(
    frames: bytes,
    id_prefix: bytes,
    first_id: int,
    ack_prefix: bytes | None,
    first_token: int,
    max_payload: int,
) -> Stamped | None:
    """The C stamp_critical's reference: each publish of `frames` as `Publisher._critical_msg` writes it
    (Nats-Msg-Id <id_prefix><n>, the PubAck reply <ack_prefix><t> when ack_prefix is given), one
    (subject, frame, size) each; None for what only the per-message path decides (a reply subject, a
    Nats-Msg-Id already there, an empty or unterminated header block, a size over max_payload)."""
    parser = ClientParser(max_payload=-1)
    parser.headers = True  # HPUBs in a run were accepted already
    prefix = id_prefix.decode()
    reply_prefix = ack_prefix.decode() if ack_prefix is not None else None
    out: Stamped = []
    for i, op in enumerate(parser.feed_data(frames)):
        if type(op) is not Pub or op.reply is not None or op.hdr_size == 0:
            return None
        headers = op.headers if op.hdr_size > 0 else None
        if headers is not None and (
            header_value(headers, "Nats-Msg-Id") is not None or not headers.endswith(b"\r\n\r\n")
        ):
            return None
        headers = add_header(headers, "Nats-Msg-Id", f"{prefix}{first_id + i}")
        payload = op.payload
        size = len(payload) + len(headers)
        if size > max_payload:
            return None
        reply = f"{reply_prefix}{first_token + i}" if reply_prefix is not None else None
        out.append((_wire(op.subject), encode_pub(op.subject, reply, payload, headers), size))
    return out


# In C when built, else the Python reference (the same frames: tests/protocol/test_stamp.py).
stamp_critical: Callable[[bytes, bytes, int, bytes | None, int, int], Stamped | None] = (
    speedups.stamp_critical or stamp_critical_py
)


def select_frames(frames: bytes, plan: list[tuple[bytes, int, int, int, int]]) -> Selected:
    """select_frames in C when built, else (or when C declines a frame) the Python reference."""
    fast = speedups.select_frames
    if fast is not None:
        chosen = fast(frames, plan)
        if chosen is not None:
            return chosen
    chosen = select_frames_py(frames, plan)
    assert chosen is not None, "a run's frames are publishes the parser took"
    return chosen
