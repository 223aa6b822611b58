"""Encoders, header helpers and subject rules."""

from __future__ import annotations

import pytest

from proxy.nats.protocol import (
    OK_FRAME,
    PING_FRAME,
    PONG_FRAME,
    add_header,
    encode_connect,
    encode_err,
    encode_info,
    encode_msg,
    encode_pub,
    encode_sub,
    encode_unsub,
    header_value,
    is_valid_publish_subject,
    is_valid_subject,
    status_message_headers,
)


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (
            encode_info({"server_id": "N", "max_payload": 1024}),
            b'INFO {"server_id":"N","max_payload":1024} \r\n',
        ),
        # Go's encoding/json escapes HTML characters; nats-server's INFO does too.
        (encode_info({"name": "<a&b>"}), b'INFO {"name":"\\u003ca\\u0026b\\u003e"} \r\n'),
        (encode_connect({"verbose": False, "name": "<x>"}), b'CONNECT {"verbose":false,"name":"<x>"}\r\n'),
        (encode_pub("foo", None, b"abc"), b"PUB foo 3\r\nabc\r\n"),
        (encode_pub("foo", "_INBOX.1", b""), b"PUB foo _INBOX.1 0\r\n\r\n"),
        (encode_pub("foo", None, b"ab", b"NATS/1.0\r\n\r\n"), b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nab\r\n"),
        (encode_pub("foo", "r", b"", b"NATS/1.0\r\n\r\n"), b"HPUB foo r 12 12\r\nNATS/1.0\r\n\r\n\r\n"),
        (encode_pub("f\udcffo", None, b"x"), b"PUB f\xffo 1\r\nx\r\n"),
        (encode_sub("foo.*", None, 1), b"SUB foo.* 1\r\n"),
        (encode_sub("foo.>", "workers", "a7"), b"SUB foo.> workers a7\r\n"),
        (encode_unsub(3), b"UNSUB 3\r\n"),
        (encode_unsub("a7", 10), b"UNSUB a7 10\r\n"),
        (encode_msg(b"foo", b"1", None, -1, b"abc"), b"MSG foo 1 3\r\nabc\r\n"),
        (encode_msg(b"foo", b"1", b"r", -1, b""), b"MSG foo 1 r 0\r\n\r\n"),
        (
            encode_msg(b"foo", b"1", None, 16, b"NATS/1.0 503\r\n\r\n"),
            b"HMSG foo 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n",
        ),
        (
            encode_msg(b"foo", b"9", b"r", 12, b"NATS/1.0\r\n\r\nab"),
            b"HMSG foo 9 r 12 14\r\nNATS/1.0\r\n\r\nab\r\n",
        ),
        (encode_err("Unknown Protocol Operation"), b"-ERR 'Unknown Protocol Operation'\r\n"),
        (encode_err(""), b""),
        (PING_FRAME + PONG_FRAME + OK_FRAME, b"PING\r\nPONG\r\n+OK\r\n"),
        (status_message_headers(503), b"NATS/1.0 503\r\n\r\n"),
        (status_message_headers(408, "Request Timeout"), b"NATS/1.0 408 Request Timeout\r\n\r\n"),
    ],
)
def test_encoded_bytes(encoded: bytes, expected: bytes) -> None:
    assert encoded == expected


BLOCK = b"NATS/1.0\r\nKPI-Priority: 3\r\nNats-Msg-Id:  abc:1 \r\nkpi-priority: 9\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "name", "value"),
    [
        (BLOCK, "KPI-Priority", "3"),
        (BLOCK, "kpi-PRIORITY", "3"),
        (BLOCK, "Nats-Msg-Id", "abc:1"),
        (BLOCK, "Nats-Expected-Stream", None),
        (BLOCK, "Priority", None),
        (b"NATS/1.0 503\r\n\r\n", "NATS/1.0 503", None),
        (b"NATS/1.0\r\nEmpty:\r\n\r\n", "Empty", ""),
        (b"NATS/1.0\r\nLast: x", "Last", "x"),
    ],
)
def test_header_value(headers: bytes, name: str, value: str | None) -> None:
    assert header_value(headers, name) == value


def test_add_header() -> None:
    created = add_header(None, "KPI-Priority", "2")
    assert created == b"NATS/1.0\r\nKPI-Priority: 2\r\n\r\n"
    appended = add_header(status_message_headers(503), "Nats-Msg-Id", "m1")
    assert appended == b"NATS/1.0 503\r\nNats-Msg-Id: m1\r\n\r\n"
    assert header_value(add_header(created, "X-Two", "b"), "x-two") == "b"
    assert add_header(b"", "A", "1") == b"NATS/1.0\r\nA: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "name", "value"),
    [
        (None, "Bad:Name", "x"),
        (None, "Bad Name", "x"),
        (None, "", "x"),
        (None, "Name", "two\r\nlines"),
        (b"NATS/1.0\r\nA: 1\r\n", "B", "2"),
    ],
)
def test_add_header_refuses_what_would_corrupt_the_block(
    headers: bytes | None, name: str, value: str
) -> None:
    with pytest.raises(ValueError):
        add_header(headers, name, value)


# Verdicts of nats-server 2.9.10: SUB subjects by its sublist insert, PUB subjects by its pedantic check.
SUBJECTS = [
    # subject, valid for SUB, valid for pedantic PUB
    ("foo", True, True),
    ("foo.bar.baz", True, True),
    ("foo.*", True, False),
    ("*", True, False),
    (">", True, False),
    ("foo.>", True, False),
    ("foo.*.bar", True, False),
    ("foo.b*r", True, True),
    ("foo.>x", True, True),
    ("foo.>.bar", False, False),
    (">.foo", False, False),
    ("foo..bar", False, False),
    (".foo", False, False),
    ("foo.", False, False),
    ("", False, False),
    ("foo bar", False, False),
    ("foo\tbar", False, False),
    ("foo\x0cbar", True, True),
    ("$JS.API.>", True, False),
    ("_INBOX.abc.123", True, True),
]


@pytest.mark.parametrize(("subject", "sub_ok", "pub_ok"), SUBJECTS)
def test_subject_rules(subject: str, sub_ok: bool, pub_ok: bool) -> None:
    assert (is_valid_subject(subject), is_valid_publish_subject(subject)) == (sub_ok, pub_ok)
