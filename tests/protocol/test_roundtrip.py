"""Property: anything the encoders write, the parsers read back, however the bytes are cut into reads."""

from __future__ import annotations

import string
from functools import reduce
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.nats.protocol import (
    OK,
    OK_FRAME,
    PING,
    PING_FRAME,
    PONG,
    PONG_FRAME,
    ClientParser,
    Connect,
    Err,
    Info,
    Msg,
    Pub,
    ServerParser,
    Sub,
    Unsub,
    add_header,
    encode_connect,
    encode_err,
    encode_info,
    encode_msg,
    encode_pub,
    encode_sub,
    encode_unsub,
)
from tests.protocol.chunkings import feed_reads

tokens = st.text(alphabet=string.ascii_letters + string.digits + "_-$", min_size=1, max_size=8)
subjects = st.lists(tokens, min_size=1, max_size=4).map(".".join)
sids = st.integers(min_value=0, max_value=2**40).map(str) | tokens
# Bodies that look like protocol on purpose: a parser that peeks into them is wrong.
payloads = st.binary(max_size=300) | st.sampled_from([b"\r\n", b"PING\r\n", b"PUB x 1\r\nx\r\n", b"\n\r"])
header_names = st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=12)
header_values = st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=20)
header_blocks = st.lists(st.tuples(header_names, header_values), max_size=3).map(
    lambda pairs: reduce(lambda block, pair: add_header(block, *pair), pairs, None) or b"NATS/1.0\r\n\r\n"
)

client_ops = st.one_of(
    st.tuples(st.just("pub"), subjects, st.none() | subjects, payloads, st.none() | header_blocks),
    st.tuples(st.just("sub"), subjects, st.none() | tokens, sids),
    st.tuples(st.just("unsub"), sids, st.none() | st.integers(min_value=1, max_value=999_999_999)),
    st.just(("ping",)),
)


def cut(blob: bytes, offsets: list[int]) -> list[bytes]:
    """The blob cut at the given offsets (in any order, repeats allowed)."""
    bounds = [0, *sorted(o % (len(blob) + 1) for o in offsets), len(blob)]
    return [blob[a:b] for a, b in pairwise(bounds)]


def encode_client_op(op: tuple) -> tuple[bytes, object]:
    """Wire bytes of an op and the op ClientParser must read back."""
    kind = op[0]
    if kind == "pub":
        _, subject, reply, payload, headers = op
        frame = encode_pub(subject, reply, payload, headers)
        hdr = -1 if headers is None else len(headers)
        return frame, Pub(subject, reply, hdr, frame, frame.index(b"\r\n") + 2)
    if kind == "sub":
        _, subject, queue, sid = op
        return encode_sub(subject, queue, sid), Sub(subject, queue, sid)
    if kind == "unsub":
        _, sid, max_msgs = op
        return encode_unsub(sid, max_msgs), Unsub(sid, max_msgs)
    return PING_FRAME, PING


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(client_ops, max_size=25), offsets=st.lists(st.integers(min_value=0), max_size=12))
def test_client_ops_round_trip(ops: list[tuple], offsets: list[int]) -> None:
    options = {"verbose": False, "pedantic": False, "headers": True}
    encoded = [encode_client_op(op) for op in ops]
    blob = encode_connect(options) + b"".join(frame for frame, _ in encoded)
    got = feed_reads(ClientParser(), cut(blob, offsets))
    assert got == [Connect(options)] + [op for _, op in encoded]
    for (_, subject, _, payload, headers), parsed in zip(
        (op for op in ops if op[0] == "pub"), (op for op in got if isinstance(op, Pub)), strict=True
    ):
        assert (parsed.subject, parsed.payload, parsed.headers) == (subject, payload, headers)


server_ops = st.one_of(
    st.tuples(
        st.just("msg"), subjects, st.integers(min_value=0, max_value=2**40), st.none() | subjects, payloads
    ),
    st.tuples(
        st.just("hmsg"),
        subjects,
        st.integers(min_value=0, max_value=2**40),
        st.none() | subjects,
        header_blocks,
        payloads,
    ),
    st.tuples(st.just("info"), st.dictionaries(tokens, st.integers() | tokens | st.booleans(), max_size=4)),
    st.tuples(
        st.just("err"), st.sampled_from(["Authorization Violation", "Invalid Subject", "Stale Connection"])
    ),
    st.sampled_from([("ping",), ("pong",), ("ok",)]),
)


def encode_server_op(op: tuple) -> tuple[bytes, object]:
    """Wire bytes of an op and the op ServerParser must read back."""
    kind = op[0]
    if kind in ("msg", "hmsg"):
        subject, sid, reply = op[1].encode(), op[2], None if op[3] is None else op[3].encode()
        body, hdr = (op[4], -1) if kind == "msg" else (op[4] + op[5], len(op[4]))
        return encode_msg(subject, b"%d" % sid, reply, hdr, body), Msg(subject, sid, reply, hdr, body)
    if kind == "info":
        return encode_info(op[1]), Info(op[1])
    if kind == "err":
        return encode_err(op[1]), Err(
            op[1], op[1] == "Authorization Violation" or op[1] == "Stale Connection"
        )
    return {"ping": (PING_FRAME, PING), "pong": (PONG_FRAME, PONG), "ok": (OK_FRAME, OK)}[kind]


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(server_ops, max_size=25), offsets=st.lists(st.integers(min_value=0), max_size=12))
def test_server_ops_round_trip(ops: list[tuple], offsets: list[int]) -> None:
    encoded = [encode_server_op(op) for op in ops]
    blob = b"".join(frame for frame, _ in encoded)
    assert feed_reads(ServerParser(), cut(blob, offsets)) == [op for _, op in encoded]
