"""stamp_critical: a run's critical publishes with their Nats-Msg-Id and PubAck reply, in C and in Python.

For random runs (PUBs, HPUBs with other headers, odd blanks the parser accepts, and what only the
per-message path takes: replies, a Nats-Msg-Id already there, an empty header block, sizes over
max_payload), the C function and `stamp_critical_py` return the same frames, or both decline; and each
stamped frame is byte for byte what `Publisher._critical_msg` builds for that message alone.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.nats import speedups
from proxy.nats.protocol import ClientParser, PubRun, add_header, encode_pub
from proxy.pipeline.runs import split_run, stamp_critical_py

STAMP = speedups.stamp_critical
needs_c = pytest.mark.skipif(
    STAMP is None and bool(os.environ.get("KPI_SIDECAR_NO_EXTENSIONS")), reason="turned off"
)
ACK = b"_KPI_ACK.SRV1."
EMPTY = b"(an HPUB with a header block of 0 bytes)"

parts_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "orders.eu", "café.x"]),
        st.sampled_from([None, None, None, "inbox.1"]),
        st.sampled_from(
            [
                None,
                None,
                b"X-Trace: 1\r\n",
                b"nats-msg-id: given\r\n",
                b"",
                b"KPI-Priority: critical\r\n",
                EMPTY,
            ]
        ),
        st.binary(max_size=40),
        st.booleans(),  # blanks as nats-py writes them ("PUB  a  2")
    ),
    min_size=1,
    max_size=40,
)


def build(parts: list) -> bytes:
    out = []
    for subject, reply, block, payload, blanks in parts:
        headers = None if block is None else b"" if block is EMPTY else b"NATS/1.0\r\n" + block + b"\r\n"
        frame = encode_pub(subject, reply, payload, headers)
        if blanks and headers is None and reply is None:
            frame = frame.replace(b" ", b"  ", 2)
        out.append(frame)
    return b"".join(out)


def one_by_one(frames: bytes, first_id: int, ack: bytes | None, first_token: int) -> list[bytes]:
    """What the per-message path writes for each (Publisher._critical_msg's encoding)."""
    parser = ClientParser(max_payload=-1)
    parser.headers = True
    out = []
    for i, op in enumerate(parser.feed_data(frames)):
        headers = add_header(op.headers if op.hdr_size > 0 else None, "Nats-Msg-Id", f"SRV1-{first_id + i}")
        reply = f"{ack.decode()}{first_token + i}" if ack is not None else None
        out.append(encode_pub(op.subject, reply, op.payload, headers))
    return out


@needs_c
@settings(max_examples=300, deadline=None)
@given(
    parts=parts_st,
    jetstream=st.booleans(),
    first=st.integers(1, 10**12),
    limit=st.sampled_from([60, 1 << 20]),
)
def test_c_and_python_stamp_the_same_frames(parts: list, jetstream: bool, first: int, limit: int) -> None:
    frames = build(parts)
    ack = ACK if jetstream else None
    c = STAMP(frames, b"SRV1-", first, ack, first + 7, limit)  # type: ignore[misc]
    py = stamp_critical_py(frames, b"SRV1-", first, ack, first + 7, limit)
    assert c == py
    declines = any(
        reply is not None or block in (EMPTY, b"nats-msg-id: given\r\n") for _, reply, block, _, _ in parts
    )
    if declines:
        assert py is None
    elif py is not None:
        assert [frame for _, frame, _ in py] == one_by_one(frames, first, ack, first + 7)
        assert all(size <= limit for _, _, size in py)


def test_sizes_and_subjects() -> None:
    frames = b"PUB orders.eu 3\r\nabc\r\n" + encode_pub(
        "orders.eu", None, b"hi", b"NATS/1.0\r\nX-A: 1\r\n\r\n"
    )
    stamped = stamp_critical_py(frames, b"S-", 41, ACK, 9, 1 << 20)
    assert stamped == [
        (
            b"orders.eu",
            b"HPUB orders.eu _KPI_ACK.SRV1.9 31 34\r\nNATS/1.0\r\nNats-Msg-Id: S-41\r\n\r\nabc\r\n",
            34,
        ),
        (
            b"orders.eu",
            b"HPUB orders.eu _KPI_ACK.SRV1.10 39 41\r\nNATS/1.0\r\nX-A: 1\r\nNats-Msg-Id: S-42\r\n\r\nhi\r\n",
            41,
        ),
    ]
    if STAMP is not None:
        assert STAMP(frames, b"S-", 41, ACK, 9, 1 << 20) == stamped
        assert STAMP(frames, b"S-", 41, ACK, 9, 40) is None  # the second grows past max_payload


@settings(max_examples=200, deadline=None)
@given(parts=parts_st, cut=st.integers(1, 39))
def test_a_run_cut_in_two_is_the_same_run(parts: list, cut: int) -> None:
    # What fits in the PubAck window goes now, the rest waits (Publisher._window_full): the two parts are
    # the parser's own runs of the same frames.
    frames = build(parts)
    parser = ClientParser(max_payload=-1)
    parser.headers = parser.batch = True
    (op,) = parser.feed_data(frames)
    assert type(op) is PubRun
    if not 0 < cut < op.n:
        return
    head, tail = split_run(op, cut)
    assert (head.n, tail.n) == (cut, op.n - cut)
    assert head.frames + tail.frames == op.frames
    merged = dict(head.counts)
    for subject, k in tail.counts.items():
        merged[subject] = merged.get(subject, 0) + k
    assert merged == op.counts
