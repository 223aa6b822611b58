"""ClientParser: bytes an application sends in, ops out, exactly as nats-server 2.9 would judge them."""

from __future__ import annotations

import pytest

from proxy.nats.protocol import (
    DEFAULT_MAX_PAYLOAD,
    MAX_CONTROL_LINE,
    PING,
    ClientParser,
    Connect,
    Err,
    encode_pub,
)
from tests.protocol.cases import (
    CASES,
    CH,
    CH_OP,
    MAX_CONTROL,
    MAX_PAYLOAD,
    SILENT,
    UNKNOWN,
    Case,
    arg_of,
    pub,
)
from tests.protocol.chunkings import bytewise, feed_reads, split_offsets, two_reads


def parser_for(case: Case) -> ClientParser:
    return ClientParser(**case.parser_kwargs)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_whole(case: Case) -> None:
    assert parser_for(case).feed_data(case.data) == case.ops


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_cut_at_every_offset(case: Case) -> None:
    for at in split_offsets(case.data, case.large):
        assert feed_reads(parser_for(case), two_reads(case.data, at)) == case.ops, f"cut at {at}"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_one_byte_at_a_time(case: Case) -> None:
    assert feed_reads(parser_for(case), bytewise(case.data, case.large)) == case.ops


def test_dead_after_fatal_error() -> None:
    parser = ClientParser()
    assert parser.feed_data(b"PING\r\nFOO\r\nPING\r\n") == [PING, UNKNOWN]
    assert parser.feed_data(b"PING\r\n") == []
    assert parser.buffered == 0


def test_empty_read_is_a_no_op() -> None:
    parser = ClientParser()
    assert parser.feed_data(b"PUB a 1\r\n") == []
    assert parser.feed_data(b"") == []
    assert parser.feed_data(b"x\r\n") == [pub(b"PUB a 1\r\nx\r\n", "a")]


def test_any_bytes_like_read() -> None:
    frame = b"PUB a 1\r\nx\r\n"
    parser = ClientParser()
    assert parser.feed_data(bytearray(frame)) + parser.feed_data(memoryview(frame)) == [pub(frame, "a")] * 2
    assert type(parser.feed_data(bytearray(frame))[0].frame) is bytes


def test_control_line_limit_detected_before_the_line_ends() -> None:
    """Like nats-server, a too-long line is refused without waiting for its CRLF."""
    assert ClientParser().feed_data(b"PUB " + b"s" * MAX_CONTROL_LINE) == []
    assert ClientParser().feed_data(b"PUB " + b"s" * (MAX_CONTROL_LINE + 1)) == [MAX_CONTROL]
    # A CR right after the limit may still be the end of the line.
    assert ClientParser().feed_data(b"PUB " + b"s" * MAX_CONTROL_LINE + b"\r") == []
    parser = ClientParser()
    assert parser.feed_data(b"PUB " + b"s" * 4000) == []
    assert parser.feed_data(b"s" * 96) == []
    assert parser.feed_data(b"s") == [MAX_CONTROL]


def test_unknown_op_detected_before_the_line_ends() -> None:
    parser = ClientParser()
    assert parser.feed_data(b"PU") == []
    assert parser.feed_data(b"X") == [UNKNOWN]


def test_bad_terminator_detected_before_the_next_op() -> None:
    parser = ClientParser()
    assert parser.feed_data(b"PUB a 3\r\nab") == []
    assert parser.feed_data(b"c") == []
    assert parser.feed_data(b"x") == [UNKNOWN]


def test_payload_limit_follows_the_upstream() -> None:
    """The shell raises or lowers max_payload when the upstream INFO arrives; cached lines obey it."""
    parser = ClientParser()
    frame = encode_pub("big", None, b"x" * (DEFAULT_MAX_PAYLOAD + 1))
    parser.max_payload = 8 * 1024 * 1024
    assert parser.feed_data(frame) == [pub(frame, "big")]
    assert parser.feed_data(frame) == [pub(frame, "big")]
    parser.max_payload = DEFAULT_MAX_PAYLOAD
    assert parser.feed_data(frame) == [MAX_PAYLOAD]


def test_headers_need_the_connect_flag_and_upstream_support() -> None:
    frame = b"HPUB h 12 14\r\nNATS/1.0\r\n\r\nab\r\n"
    parser = ClientParser()
    assert parser.feed_data(CH + frame) == [CH_OP, pub(frame, "h", hdr=12)]
    assert parser.headers is True
    no_support = ClientParser()
    no_support.supports_headers = False
    assert no_support.feed_data(CH + frame) == [CH_OP, SILENT]
    assert no_support.headers is False


def test_headers_withdrawn_by_a_later_connect_close_cached_lines_too() -> None:
    frame = b"HPUB h 12 14\r\nNATS/1.0\r\n\r\nab\r\n"
    parser = ClientParser()
    assert parser.feed_data(CH + frame) == [CH_OP, pub(frame, "h", hdr=12)]
    assert parser.feed_data(b'CONNECT {"headers":false}\r\n' + frame) == [Connect({"headers": False}), SILENT]


@pytest.mark.parametrize(
    ("connects", "expected"),
    [
        (b"", {"verbose": True, "pedantic": True, "echo": True, "headers": False, "no_responders": False}),
        (
            b'CONNECT {"verbose":false,"pedantic":false,"echo":false,"protocol":1}\r\n',
            {"verbose": False, "pedantic": False, "echo": False, "protocol": 1},
        ),
        (
            b'CONNECT {"Verbose":false,"headers":true,"no_responders":true}\r\nCONNECT {"verbose":null}\r\n',
            {"verbose": False, "pedantic": True, "headers": True, "no_responders": True, "protocol": 0},
        ),
    ],
)
def test_effective_client_options(connects: bytes, expected: dict) -> None:
    """The options nats-server applies: defaults before CONNECT, then per-key overrides; null keeps."""
    parser = ClientParser()
    assert not any(isinstance(op, Err) for op in parser.feed_data(connects))
    assert {name: getattr(parser, name) for name in expected} == expected


def test_only_the_unparsed_tail_is_kept_while_streaming_10_mb() -> None:
    frames = [
        encode_pub("sensor.temp", None, b"t" * 100),
        encode_pub("svc.echo", "_INBOX.abc.1", b"r" * 700),
        b"PING\r\n",
        encode_pub("logs", None, b"l" * 3000),
    ]
    stream = b"".join(frames) * (10 * 1024 * 1024 // len(b"".join(frames)) + 1)
    longest = max(len(f) for f in frames)
    parser = ClientParser()
    count = 0
    for at in range(0, len(stream), 7919):
        count += len(parser.feed_data(stream[at : at + 7919]))
        assert parser.buffered < longest
    assert count == len(frames) * (len(stream) // len(b"".join(frames)))
    assert parser.buffered == 0


def test_a_large_body_is_held_only_until_complete() -> None:
    frame = encode_pub("big", None, b"x" * DEFAULT_MAX_PAYLOAD)
    parser = ClientParser()
    held = []
    ops = []
    for at in range(0, len(frame), 65536):
        ops += parser.feed_data(frame[at : at + 65536])
        held.append(parser.buffered)
    assert ops == [pub(frame, "big")]
    assert held[-2] == len(frame) - len(frame) % 65536
    assert held[-1] == 0


@pytest.mark.parametrize(
    ("frame", "headers", "payload"),
    [
        (b"PUB a 3\r\nabc\r\n", None, b"abc"),
        (b"PUB a r 0\r\n\r\n", None, b""),
        (b"HPUB a 12 14\r\nNATS/1.0\r\n\r\nab\r\n", b"NATS/1.0\r\n\r\n", b"ab"),
        (b"HPUB a 0 2\r\nab\r\n", b"", b"ab"),
        (b"HPUB a 16 16\r\nNATS/1.0 503\r\n\r\n\r\n", b"NATS/1.0 503\r\n\r\n", b""),
    ],
)
def test_pub_views(frame: bytes, headers: bytes | None, payload: bytes) -> None:
    parser = ClientParser()
    parser.feed_data(CH)
    (op,) = parser.feed_data(frame)
    assert (op.headers, op.payload, op.size) == (headers, payload, len((headers or b"") + payload))
    assert op.frame == frame


def test_max_control_line_is_configurable() -> None:
    assert ClientParser(max_control_line=16).feed_data(b"PUB " + arg_of(17)) == [MAX_CONTROL]
    assert ClientParser(max_control_line=16).feed_data(b"PUB " + arg_of(16)) == []
