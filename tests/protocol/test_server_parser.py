"""ServerParser: what the upstream nats-server sends, in any chunking."""

from __future__ import annotations

import pytest

from proxy.nats.protocol import (
    ERR_MAX_CONTROL_LINE,
    ERR_PARSER,
    ERR_UNKNOWN_OP,
    OK,
    PING,
    PONG,
    Err,
    Info,
    Msg,
    ServerParser,
)
from tests.protocol.chunkings import assert_chunking_invariant

UNKNOWN = Err(ERR_UNKNOWN_OP, True)
PARSER = Err(ERR_PARSER, True)
HDRS = b"NATS/1.0\r\nKPI-Priority: 2\r\n\r\n"

CASES: list[tuple[str, bytes, list]] = [
    (
        "info-as-nats-server-writes-it",
        b'INFO {"server_id":"N1","max_payload":1048576,"headers":true} \r\n',
        [Info({"server_id": "N1", "max_payload": 1048576, "headers": True})],
    ),
    ("info-null", b"INFO null\r\n", [Info({})]),
    ("msg", b"MSG foo.bar 1 3\r\nabc\r\n", [Msg(b"foo.bar", 1, None, -1, b"abc")]),
    ("msg-reply", b"MSG foo 22 _INBOX.a 0\r\n\r\n", [Msg(b"foo", 22, b"_INBOX.a", -1, b"")]),
    ("msg-crlf-in-body", b"MSG foo 1 4\r\n\r\n\r\n\r\n", [Msg(b"foo", 1, None, -1, b"\r\n\r\n")]),
    ("msg-repeated", b"MSG a 1 1\r\nx\r\n" * 3, [Msg(b"a", 1, None, -1, b"x")] * 3),
    ("msg-lowercase-tabs", b"msg\tfoo  1\t3\nabc\r\n", [Msg(b"foo", 1, None, -1, b"abc")]),
    (
        "hmsg",
        b"HMSG foo 1 %d %d\r\n%sab\r\n" % (len(HDRS), len(HDRS) + 2, HDRS),
        [Msg(b"foo", 1, None, len(HDRS), HDRS + b"ab")],
    ),
    (
        "hmsg-no-responders",
        b"HMSG _INBOX.x 9 16 16\r\nNATS/1.0 503\r\n\r\n\r\n",
        [Msg(b"_INBOX.x", 9, None, 16, b"NATS/1.0 503\r\n\r\n")],
    ),
    (
        "hmsg-reply",
        b"HMSG foo 1 r 12 12\r\nNATS/1.0\r\n\r\n\r\n",
        [Msg(b"foo", 1, b"r", 12, b"NATS/1.0\r\n\r\n")],
    ),
    ("ping-pong-ok", b"PING\r\nPONG\r\n+OK\r\n", [PING, PONG, OK]),
    (
        "errors-fatal-or-not",
        b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n-ERR 'Invalid Subject'\r\n"
        b"-ERR 'maximum subscriptions exceeded'\r\n-ERR 'Invalid Publish Subject'\r\n"
        b"-ERR 'Stale Connection'\r\n-ERR  unquoted text \r\nPING\r\n",
        [
            Err('Permissions Violation for Publish to "x"', False),
            Err("Invalid Subject", False),
            Err("maximum subscriptions exceeded", False),
            Err("Invalid Publish Subject", False),
            Err("Stale Connection", True),
            Err("unquoted text", True),
            PING,
        ],
    ),
    ("unknown-op", b"PING\r\nPUB foo 1\r\nx\r\nPING\r\n", [PING, UNKNOWN]),
    ("unknown-op-before-lf", b"MSX", [UNKNOWN]),
    ("msg-too-few-arguments", b"MSG foo 3\r\nabc\r\n", [PARSER]),
    ("msg-too-many-arguments", b"MSG foo 1 a b 3\r\nabc\r\n", [PARSER]),
    ("msg-sid-not-a-number", b"MSG foo x 3\r\nabc\r\n", [PARSER]),
    ("msg-size-not-a-number", b"MSG foo 1 -3\r\nabc\r\n", [PARSER]),
    ("msg-sid-too-long", b"MSG foo 1234567890123456789 1\r\nx\r\n", [PARSER]),
    (
        "msg-sid-longest",
        b"MSG foo 123456789012345678 1\r\nx\r\n",
        [Msg(b"foo", 123456789012345678, None, -1, b"x")],
    ),
    ("hmsg-header-larger-than-total", b"HMSG foo 1 5 3\r\nabc\r\n", [PARSER]),
    ("msg-body-not-terminated", b"MSG foo 1 3\r\nabcd\r\n", [UNKNOWN]),
    ("msg-body-followed-by-garbage", b"MSG foo 1 3\r\nabcX", [UNKNOWN]),
    ("info-bad-json", b"INFO {x\r\n", [PARSER]),
    ("info-array", b"INFO []\r\n", [PARSER]),
    ("incomplete", b"MSG foo 1 3\r\nab", []),
]


@pytest.mark.parametrize(("data", "ops"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ops_in_every_chunking(data: bytes, ops: list) -> None:
    assert_chunking_invariant(ServerParser, data, ops)


def test_dead_after_malformed_data() -> None:
    parser = ServerParser()
    assert parser.feed_data(b"BOGUS\r\n") == [UNKNOWN]
    assert parser.feed_data(b"PING\r\n") == []


def test_parsing_goes_on_after_an_err() -> None:
    """A server -ERR is information, not malformed data: the server itself decides whether to close."""
    parser = ServerParser()
    assert parser.feed_data(b"-ERR 'Authorization Violation'\r\n") == [Err("Authorization Violation", True)]
    assert parser.feed_data(b"PING\r\n") == [PING]


def test_control_line_limit() -> None:
    assert ServerParser(max_control_line=16).feed_data(b"MSG " + b"s" * 12 + b" 1 0") == []
    assert ServerParser(max_control_line=16).feed_data(b"MSG " + b"s" * 13 + b" 1 0") == [
        Err(ERR_MAX_CONTROL_LINE, True)
    ]


def test_msg_views() -> None:
    (hmsg,) = ServerParser().feed_data(b"HMSG a 1 12 14\r\nNATS/1.0\r\n\r\nab\r\n")
    (msg,) = ServerParser().feed_data(b"MSG a 1 2\r\nab\r\n")
    assert (hmsg.headers, hmsg.payload) == (b"NATS/1.0\r\n\r\n", b"ab")
    assert (msg.headers, msg.payload) == (None, b"ab")


def test_only_the_unparsed_tail_is_kept() -> None:
    frame = b"MSG updates 4 100\r\n" + b"u" * 100 + b"\r\n"
    stream = frame * 20_000
    parser = ServerParser()
    count = 0
    for at in range(0, len(stream), 4093):
        count += len(parser.feed_data(stream[at : at + 4093]))
        assert parser.buffered < len(frame)
    assert (count, parser.buffered) == (20_000, 0)
