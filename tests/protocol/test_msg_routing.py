"""The upstream direction in C: runs of plain MSGs (`scan_msgs` -> `MsgRun`) and their routing
(`route_msgs`), checked against the pure-Python parser and encoder they stand in for."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.roles import CONTROL_PREFIXES, INBOX_PREFIX
from proxy.nats import protocol as nats_protocol
from proxy.nats.protocol import Msg, MsgRun, ServerParser, encode_msg, next_msg
from tests.protocol.chunkings import bytewise, feed_reads, split_offsets, two_reads
from tests.protocol.test_roundtrip import cut, encode_server_op, server_ops
from tests.protocol.test_server_parser import CASES

SCAN = nats_protocol.scan_msgs
ROUTE = nats_protocol.route_msgs
ROLE_PREFIXES = (INBOX_PREFIX, *CONTROL_PREFIXES)
pytestmark = pytest.mark.skipif(
    SCAN is None and not nats_protocol.SPEEDUPS,
    reason="KPI_SIDECAR_NO_EXTENSIONS (test_batch checks the build)",
)


def batch_parser() -> ServerParser:
    parser = ServerParser()
    parser.batch = True
    return parser


def expand(ops: list) -> list:
    """Each MsgRun replaced by the Msgs of its frames, read with next_msg."""
    out: list = []
    for op in ops:
        if type(op) is not MsgRun:
            out.append(op)
            continue
        assert op.frames, "an empty run"
        pos = 0
        while pos < len(op.frames):
            msg, pos = next_msg(op.frames, pos)
            assert msg.hdr_size == -1
            out.append(msg)
        assert pos == len(op.frames)
    return out


@pytest.mark.parametrize(("data", "ops"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_batch_mode_reads_the_same_ops_in_every_chunking(data: bytes, ops: list) -> None:
    assert expand(batch_parser().feed_data(data)) == ops
    for at in split_offsets(data):
        assert expand(feed_reads(batch_parser(), two_reads(data, at))) == ops, f"cut at {at}"
    assert expand(feed_reads(batch_parser(), bytewise(data))) == ops


odd_frames = st.sampled_from(
    [
        b"MSG a 1 2\r\nab\r\n",
        b"MSG a  1 2\r\nab\r\n",  # two blanks: not as nats-server writes it, the Python parser's
        b"MSG a 1  2\r\nab\r\n",  # an empty reply: how nats-server writes JetStream's PubAcks
        b"MSG a 1   2\r\nab\r\n",
        b"MSG a 1  r 2\r\nab\r\n",
        b"HMSG a 1  12 12\r\nNATS/1.0\r\n\r\n\r\n",
        b"MSG a 1 r 0\r\n\r\n",
        b"MSG a\x7f 1 0\r\n\r\n",
        b"MSG caf\xc3\xa9 12345678901234567 1\r\nx\r\n",
        b"MSG a 1234567890123456789 1\r\nx\r\n",  # sid of 19 digits: a parser error
        b"MSG a 1 0000000001\r\nx\r\n",
        b"MSG a 1 2\r\nab\n\n",
        b"msg a 1 1\r\nx\r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(server_ops.map(lambda op: encode_server_op(op)[0]) | odd_frames, max_size=30),
    offsets=st.lists(st.integers(min_value=0), max_size=8),
)
def test_random_streams_batch_and_plain_agree(parts: list[bytes], offsets: list[int]) -> None:
    reads = cut(b"".join(parts), offsets)
    assert expand(feed_reads(batch_parser(), reads)) == feed_reads(ServerParser(), reads)


class Client:
    """What route_msgs needs of an application connection: an `_out` bytearray."""

    def __init__(self) -> None:
        self._out = bytearray()


tokens = st.text(alphabet=string.ascii_letters + string.digits + "_-.$", min_size=1, max_size=12)
replies = st.none() | tokens | st.builds(lambda p, t: p + t, st.sampled_from(ROLE_PREFIXES), tokens)
msgs = st.tuples(st.integers(min_value=1, max_value=6), tokens, replies, st.binary(max_size=64))


# Each routed upstream sid's members: (client index, application sid) pairs; several members of one
# client (one connection, several sids on a subject) and more members than the C code keeps on its stack.
members = st.lists(st.tuples(st.integers(min_value=0, max_value=3), tokens), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(msgs, min_size=1, max_size=40),
    routed=st.dictionaries(st.integers(min_value=1, max_value=6), members),
)
def test_route_msgs_writes_what_the_python_path_would(
    frames: list[tuple[int, str, str | None, bytes]], routed: dict[int, list[tuple[int, str]]]
) -> None:
    clients = [Client() for _ in range(4)]
    routes = {usid: tuple((clients[c], sid.encode()) for c, sid in pairs) for usid, pairs in routed.items()}
    expected = [bytearray() for _ in clients]
    data = b"".join(
        encode_msg(subject.encode(), b"%d" % sid, reply and reply.encode(), -1, body)
        for sid, subject, reply, body in frames
    )
    assert SCAN(data, 0, 4096) == len(data)  # type: ignore[misc]
    delivered: dict[int, int] = {}
    pos = ROUTE(data, 0, routes, delivered)  # type: ignore[misc]
    count: dict[int, int] = {}
    offset = 0
    for usid, subject, reply, body in frames:
        if usid not in routed or (reply is not None and not reply.startswith(ROLE_PREFIXES)):
            break
        # What Deliveries.on_upstream_msg writes: client.deliver -> encode_msg, member by member.
        for c, sid in routed[usid]:
            expected[c] += encode_msg(subject.encode(), sid.encode(), reply and reply.encode(), -1, body)
        count[usid] = count.get(usid, 0) + 1
        offset = next_msg(data, offset)[1]
    # It stops at the first frame for a sid it does not route, or with a reply subject under a custom
    # prefix (the Python path remembers it for the reply's role), and not before.
    assert pos == offset
    assert delivered == count
    assert [bytes(c._out) for c in clients] == [bytes(b) for b in expected]


def test_route_msgs_appends_to_what_is_buffered_and_rejects_bad_routes() -> None:
    client = Client()
    client._out += b"PONG\r\n"
    data = b"MSG a 7 2\r\nhi\r\nMSG b 7 _INBOX.r 0\r\n\r\n"
    delivered = {7: 1}
    assert ROUTE(data, 0, {7: ((client, b"x"),)}, delivered) == len(data)  # type: ignore[misc]
    assert bytes(client._out) == b"PONG\r\nMSG a x 2\r\nhi\r\nMSG b x _INBOX.r 0\r\n\r\n"
    assert delivered == {7: 3}
    with pytest.raises(AttributeError):
        ROUTE(data, 0, {7: ((object(), b"x"),)}, {})  # type: ignore[misc]
    for bad in ((client, "x"), ((client, "x"),), (), ((client, b"x"), (client,)), (client, b"x")):
        with pytest.raises(TypeError):
            ROUTE(data, 0, {7: bad}, {})  # type: ignore[misc]
    with pytest.raises(ValueError):
        ROUTE(data, len(data) + 1, {}, {})  # type: ignore[misc]
    assert bytes(client._out) == b"PONG\r\nMSG a x 2\r\nhi\r\nMSG b x _INBOX.r 0\r\n\r\n"


def test_route_msgs_fans_out_to_each_member_in_order() -> None:
    first, second = Client(), Client()
    data = b"MSG a 7 2\r\nhi\r\nMSG a 8 1\r\nx\r\nMSG b 7 _INBOX.r 0\r\n\r\n"
    members = (*((first, b"%d" % i) for i in range(20)), (second, b"s"))
    delivered: dict[int, int] = {}
    assert ROUTE(data, 0, {7: members, 8: ((second, b"t"),)}, delivered) == len(data)  # type: ignore[misc]
    assert delivered == {7: 2, 8: 1}
    assert bytes(first._out) == b"".join(b"MSG a %d 2\r\nhi\r\n" % i for i in range(20)) + b"".join(
        b"MSG b %d _INBOX.r 0\r\n\r\n" % i for i in range(20)
    )
    assert bytes(second._out) == b"MSG a s 2\r\nhi\r\nMSG a t 1\r\nx\r\nMSG b s _INBOX.r 0\r\n\r\n"


@pytest.mark.skipif(ROUTE is None, reason="no C scanner")
def test_route_msgs_leaves_custom_prefix_replies_to_the_python_path() -> None:
    client = Client()
    data = b"MSG a 7 _INBOX.x 0\r\n\r\nMSG a 7 $JS.ACK.s.c.1 0\r\n\r\nMSG a 7 my.inbox.1 0\r\n\r\n"
    assert ROUTE(data, 0, {7: ((client, b"x"),)}, {}) == data.index(b"MSG a 7 my")  # type: ignore[misc]


def test_next_msg() -> None:
    data = b"MSG a 1 2\r\nhi\r\nMSG b 22 _INBOX.x 0\r\n\r\n"
    first, pos = next_msg(data, 0)
    assert first == Msg(b"a", 1, None, -1, b"hi") and pos == 15
    assert next_msg(data, pos) == (Msg(b"b", 22, b"_INBOX.x", -1, b""), len(data))


def test_an_empty_reply_as_nats_server_writes_it_stays_in_runs() -> None:
    # JetStream's PubAcks come as "MSG <inbox> <sid>  <size>": two blanks for the empty reply subject.
    ack = b'MSG _KPI_ACK.X.1 0  23\r\n{"stream":"R", "seq":2}\r\n'
    (run,) = batch_parser().feed_data(ack * 3)
    assert type(run) is MsgRun and run.frames == ack * 3
    msg = Msg(b"_KPI_ACK.X.1", 0, None, -1, b'{"stream":"R", "seq":2}')
    assert next_msg(run.frames, 0) == (msg, len(ack))
    assert ServerParser().feed_data(ack) == [msg]


def test_settle_acks_pops_what_jetstream_stored_and_stops_at_anything_else() -> None:
    from proxy.nats.speedups import settle_acks

    if settle_acks is None:
        pytest.skip("C scanner not built")
    prefix = b"MSG _KPI_ACK.S."

    def ack(token: bytes, body: bytes, sid: bytes = b"0", blanks: bytes = b"  ") -> bytes:
        return b"%s%s %s%s%d\r\n%s\r\n" % (prefix, token, sid, blanks, len(body), body)

    stored = b'{"stream":"R", "seq":1}'
    frames = ack(b"1", stored) + ack(b"2", stored, blanks=b" ")
    acks = {"1": ("m1", 0.0), "2": ("m2", 0.0), "3": ("m3", 0.0), "4": ("m4", 0.0)}
    entries: list = []
    # A token no longer awaited (a duplicate, another reader's) stops it: the Python path decides.
    end = settle_acks(frames + ack(b"9", stored) + ack(b"4", stored), 0, prefix, b"0", acks, entries)
    assert end == len(frames)
    assert entries == [("m1", 0.0), ("m2", 0.0)] and set(acks) == {"3", "4"}
    failure = ack(b"3", b'{"stream":"R","error":{"code":503}}')
    assert settle_acks(failure + ack(b"4", stored), 0, prefix, b"0", acks, None) == 0  # a failure too
    other_sid = ack(b"4", stored, sid=b"7")
    assert settle_acks(other_sid, 0, prefix, b"0", acks, None) == 0
    assert settle_acks(b"MSG other 0 1\r\nx\r\n", 0, prefix, b"0", acks, None) == 0
