"""select_frames: the frames of a run the engine's plan keeps, in C and in the Python reference.

For random runs (PUBs, requests, HPUBs with and without KPI-Priority, odd subjects the parser accepts) and
random plans, the C function and `select_frames_py` return the same bytes; the kept frames are exactly
those `keeps` names, and their counts are what `RunGroups.kept_counts` (the journal) says; the requests
of a REFUSED group are listed by their reply subjects, in order.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.config import Priority
from policies.roles import DATA, REQUEST
from policies.sampling import APART, REFUSED, SHARE_ONE
from proxy.nats import protocol as nats_protocol
from proxy.nats.protocol import ClientParser, Pub, PubRun, encode_pub
from proxy.pipeline.runs import _header_priority, run_groups, select_frames, select_frames_py

SELECT = nats_protocol.select_frames
needs_c = pytest.mark.skipif(
    SELECT is None and bool(os.environ.get("KPI_SIDECAR_NO_EXTENSIONS")), reason="turned off"
)

frames_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b.c", "café", "_INBOX.r", "_INBOX.s.1", "$JS.ACK.x"]),
        st.sampled_from([None, "inbox.1", "_INBOX.é.2"]),
        st.sampled_from(
            [None, b"", b"KPI-Priority: low\r\n", b"kpi-priority: HIGH\r\n", b"KPI-Priority: x\r\n"]
        ),
        st.binary(max_size=20),
    ),
    min_size=1,
    max_size=60,
)


def build(parts: list) -> bytes:
    out = []
    for subject, reply, block, payload in parts:
        headers = None if block is None else b"NATS/1.0\r\n" + block + b"\r\n"
        out.append(encode_pub(subject, reply, payload, headers))
    # A blank run nats-py writes, which only the Python loop of the C scanner's callers takes.
    out.append(b"PUB  a  2\r\nhi\r\n")
    return b"".join(out)


def run_of(frames: bytes) -> PubRun:
    parser = ClientParser(max_payload=-1)
    parser.headers = True
    parser.batch = True
    (op,) = parser.feed_data(frames)
    assert type(op) is PubRun
    return op


def classify(subject: str, header: str | None, cache: bool) -> tuple[Priority, None]:
    return (Priority[header.upper()] if header else Priority.MEDIUM), None


@settings(max_examples=200, deadline=None)
@given(parts=frames_st, seed=st.integers(0, 1 << 30))
def test_c_and_python_select_the_same_frames(parts: list, seed: int) -> None:
    frames = build(parts)
    op = run_of(frames)
    found = run_groups(op, classify, None, 0.0)
    rng = random.Random(seed)
    # A group of a reply subject covers two keys and is never sampled (the engine finishes replies).
    # A spread group (replies to several inboxes) is kept whole, as the engine keeps replies.
    plan = [
        (SHARE_ONE, 0)
        if at in found.spread
        else rng.choice(
            [(SHARE_ONE, 0), (0, 0), (APART, 0)]
            + ([(rng.randrange(SHARE_ONE), rng.randrange(SHARE_ONE))] if len(keys) == 1 else [])
            + ([(REFUSED, 0)] * 2 if group[3] is REQUEST else [])
        )
        for at, (keys, group) in enumerate(zip(found.keys, found.groups, strict=True))
    ]
    entries = found.plan_entries(plan)
    reference = select_frames_py(frames, entries)
    assert reference is not None
    if SELECT is not None:
        assert SELECT(frames, entries) == reference
    assert select_frames(frames, entries) == reference
    kept, apart, refused = reference
    refused_keys = {
        (subject, code, request) for subject, code, request, share, _ in entries if share == REFUSED
    }
    assert refused == [
        pub.reply.encode()
        for pub in feed(frames)
        if (pub.subject.encode(), header_code(pub), int(pub.reply is not None)) in refused_keys
    ]
    counts: dict[str, int] = {}
    for pub in feed(kept):
        counts[pub.subject] = counts.get(pub.subject, 0) + 1
    assert counts == found.kept_counts(plan)
    apart_groups = sum(g[1] for g, p in zip(found.groups, plan, strict=True) if p[0] == APART)
    assert len(feed(apart)) == apart_groups


@needs_c
@settings(max_examples=50, deadline=None)
@given(
    subjects=st.lists(st.integers(0, 400), min_size=65, max_size=600),
    seed=st.integers(0, 1 << 30),
)
def test_c_selects_among_many_groups_as_the_reference_does(subjects: list[int], seed: int) -> None:
    # More groups than select_frames keeps on its stack (64): found through its hash table.
    parts = [
        (f"m.{k}", "inbox.1" if k % 7 == 0 else None, b"KPI-Priority: low\r\n" if k % 5 == 0 else None, b"x")
        for k in subjects
    ]
    frames = build(parts)
    found = run_groups(run_of(frames), classify, None, 0.0)
    rng = random.Random(seed)
    plan = [
        (SHARE_ONE, 0) if at in found.spread else (rng.randrange(SHARE_ONE + 1), rng.randrange(SHARE_ONE))
        for at in range(len(found.groups))
    ]
    entries = found.plan_entries(plan)
    assert SELECT is not None
    assert SELECT(frames, entries) == select_frames_py(frames, entries)
    kept = SELECT(frames, entries)[0]  # type: ignore[index]
    counts: dict[str, int] = {}
    for pub in feed(kept):
        counts[pub.subject] = counts.get(pub.subject, 0) + 1
    assert counts == found.kept_counts(plan)


def test_the_replies_of_a_run_are_one_group_counted_per_subject() -> None:
    # A responder's run answers many inboxes: one group per (priority, role, rule), not one per inbox,
    # and select_frames matches their frames by ANY_FRAME; the journal still counts each subject.
    parts = [(f"_INBOX.app.{i}", None, None, b"r%d" % i) for i in range(100)]
    parts += [("svc.data", None, None, b"d"), ("$JS.ACK.s.c.1", None, None, b"")]
    frames = build(parts)
    found = run_groups(run_of(frames), classify, None, 0.0)
    assert [(g[0][:7], g[1], g[3].label) for g in found.groups] == [
        ("_INBOX.", 100, "reply"),
        ("svc.dat", 1, "data"),
        ("$JS.ACK", 1, "control"),
        ("a", 1, "data"),  # the trailing blank-run frame
    ]
    assert list(found.spread) == [0] and found.keys[0] == ()
    plan = [(SHARE_ONE, 0), (0, 0), (SHARE_ONE, 0), (SHARE_ONE, 0)]
    entries = found.plan_entries(plan)
    assert len(entries) == 5  # svc.data, $JS.ACK.* with and without a reply, a, ANY_FRAME
    kept, apart, refused = select_frames(frames, entries)
    assert (kept, apart, refused) == select_frames_py(frames, entries) and apart == b"" and refused == []
    assert [p.subject for p in feed(kept)] == [f"_INBOX.app.{i}" for i in range(100)] + ["$JS.ACK.s.c.1", "a"]
    counts = found.kept_counts(plan)
    assert counts == {**{f"_INBOX.app.{i}": 1 for i in range(100)}, "$JS.ACK.s.c.1": 1, "a": 1}


def header_code(pub: Pub) -> int:
    return _header_priority(pub.frame, pub.body_start, pub.hdr_size) if pub.hdr_size > 0 else 0


def feed(frames: bytes) -> list[Pub]:
    parser = ClientParser(max_payload=-1)
    parser.headers = True
    ops = parser.feed_data(frames)
    assert all(type(o) is Pub for o in ops)
    return ops


def test_groups_split_a_subject_by_header_priority_and_role() -> None:
    frames = build(
        [
            ("a", None, b"KPI-Priority: low\r\n", b"1"),
            ("a", None, None, b"2"),
            ("a", "inbox.1", None, b"3"),
            ("a", None, b"KPI-Priority: low\r\n", b"4"),
        ]
    )
    found = run_groups(run_of(frames), classify, None, 0.0)
    assert [(g[0], g[1], g[2].label, g[3].label) for g in found.groups] == [
        ("a", 2, "low", "data"),
        ("a", 1, "medium", "request"),
        ("a", 2, "medium", "data"),  # with the trailing blank-run frame
    ]
    assert found.groups[0][3] is DATA and not found.critical


@needs_c
def test_c_declines_what_it_does_not_read() -> None:
    assert SELECT is not None
    frame = encode_pub("a", None, b"x")
    assert SELECT(frame, [(b"b", 0, 0, SHARE_ONE, 0)]) is None  # no group for it
    assert SELECT(frame + b"garbage", [(b"a", 0, 0, SHARE_ONE, 0)]) is None
    assert SELECT(frame, [(b"a", 0, 0, SHARE_ONE, 0)]) == (frame, b"", [])
    with pytest.raises(ValueError):
        SELECT(frame, [(b"a", 0, 0, SHARE_ONE + 1, 0)])
    with pytest.raises(ValueError):  # only requests are refused
        SELECT(frame, [(b"a", 0, 0, REFUSED, 0)])
    with pytest.raises(TypeError):
        SELECT(frame, [("a", 0, 0, SHARE_ONE, 0)])
