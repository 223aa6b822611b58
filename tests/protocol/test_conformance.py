"""ClientParser against a real nats-server 2.9.10: same bytes in, same answer out.

Each case of `cases.py` (plus a trailing PING) is replayed to nats-server on a fresh connection. What the
server writes back, and whether it closes, must equal what a minimal shell would write from the parser's
ops: `encode_err(err.text)` for each Err (nothing for a silent close), PONG for PING, +OK in verbose mode,
and the non-fatal subject errors the shell owns (`is_valid_subject`, `is_valid_publish_subject`).
"""

from __future__ import annotations

import socket
import time
from itertools import pairwise

import pytest

from proxy.nats.protocol import (
    ERR_BAD_CLIENT_PROTOCOL,
    ERR_INVALID_PUBLISH_SUBJECT,
    ERR_INVALID_SUBJECT,
    ERR_MAX_CONTROL_LINE,
    ERR_MAX_PAYLOAD,
    ERR_NO_RESPONDERS_REQUIRES_HEADERS,
    ERR_SILENT_CLOSE,
    ERR_UNKNOWN_OP,
    OK_FRAME,
    PONG,
    PONG_FRAME,
    ClientParser,
    Connect,
    Err,
    Info,
    Msg,
    Ping,
    Pub,
    ServerParser,
    Sub,
    Unsub,
    encode_connect,
    encode_err,
    encode_info,
    encode_pub,
    encode_sub,
    is_valid_publish_subject,
    is_valid_subject,
    status_message_headers,
)
from tests.protocol.cases import CASES, Case
from tests.protocol.chunkings import bytewise

PAUSE = 0.1  # between writes, so nats-server reads them separately
GRACE = 0.05  # after the last expected byte, to catch anything unexpected


def expected_reply(case: Case, data: bytes) -> tuple[bytes, bool]:
    """What nats-server must answer to `data` according to ClientParser: (bytes, closes connection)."""
    parser = ClientParser(**case.parser_kwargs)
    out: list[bytes] = []
    # One byte at a time, so the parser's options can be read as they stand right after each op.
    for read in bytewise(data, case.large):
        for op in parser.feed_data(read):
            if isinstance(op, Err):
                out.append(encode_err(op.text))
                if op.fatal:
                    return b"".join(out), True
            elif isinstance(op, Ping):
                out.append(PONG_FRAME)
            elif isinstance(op, Sub) and not is_valid_subject(op.subject):
                out.append(encode_err(ERR_INVALID_SUBJECT))
            elif isinstance(op, Pub | Sub | Unsub | Connect):
                if isinstance(op, Pub) and parser.pedantic and not is_valid_publish_subject(op.subject):
                    out.append(encode_err(ERR_INVALID_PUBLISH_SUBJECT))
                if parser.verbose:
                    out.append(OK_FRAME)
    return b"".join(out), False


def replay(
    port: int, data: bytes, writes: tuple[int, ...], expected: bytes, closes: bool
) -> tuple[bytes, bool]:
    """Send data to nats-server in the given writes; return what it answered and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        info = b""
        while not info.endswith(b"\r\n"):
            info += sock.recv(4096)
        cuts = [0, *writes, len(data)]
        for start, stop in pairwise(cuts):
            sock.sendall(data[start:stop])
            if stop < len(data):
                time.sleep(PAUSE)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return out, True
            except TimeoutError:
                return out, False
            if not chunk:
                return out, True
            out += chunk
            if not closes and len(out) >= len(expected) and out.endswith(PONG_FRAME):
                sock.settimeout(GRACE)


SERVER_CASES = [case for case in CASES if case.server and not case.parser_kwargs]


@pytest.mark.parametrize("case", SERVER_CASES, ids=lambda case: case.id)
def test_same_answer_as_nats_server(nats_server: int, case: Case) -> None:
    data = case.data + b"PING\r\n"
    expected, closes = expected_reply(case, data)
    assert replay(nats_server, data, case.writes, expected, closes) == (expected, closes)


def test_every_error_text_is_checked() -> None:
    """Each fatal text the parser can produce appears in a case replayed to nats-server."""
    texts = {op.text for case in SERVER_CASES for op in case.ops if isinstance(op, Err)}
    assert texts == {
        ERR_UNKNOWN_OP,
        ERR_MAX_PAYLOAD,
        ERR_MAX_CONTROL_LINE,
        ERR_BAD_CLIENT_PROTOCOL,
        ERR_NO_RESPONDERS_REQUIRES_HEADERS,
        ERR_SILENT_CLOSE,
    }


def test_encode_info_writes_what_nats_server_writes(nats_server: int) -> None:
    """Re-encoding the server's own INFO gives its exact bytes: same JSON style, same trailing blank."""
    with socket.create_connection(("127.0.0.1", nats_server), timeout=5) as sock:
        raw = b""
        while not raw.endswith(b"\r\n"):
            raw += sock.recv(4096)
    (info,) = ServerParser().feed_data(raw)
    assert isinstance(info, Info)
    assert encode_info(info.options) == raw


def read_ops(sock: socket.socket, parser: ServerParser, until_pong: bool) -> list:
    """Parse what the server sends until a PONG arrives (or, with until_pong False, until it closes)."""
    ops: list = []
    while not (until_pong and ops and ops[-1] == PONG):
        chunk = sock.recv(65536)
        if not chunk:
            break
        ops += parser.feed_data(chunk)
    return ops


def test_server_parser_reads_what_nats_server_writes(nats_server: int) -> None:
    """INFO, MSG, HMSG (incl. a no-responders status), PONG and both kinds of -ERR from the real server."""
    parser = ServerParser()
    headers = b"NATS/1.0\r\nKPI-Priority: 2\r\n\r\n"
    with socket.create_connection(("127.0.0.1", nats_server), timeout=5) as sock:
        sock.sendall(
            encode_connect({"verbose": False, "pedantic": False, "headers": True, "no_responders": True})
            + encode_sub("inbox.>", None, 7)
            + encode_sub("data", "workers", 8)
            + encode_pub("data", None, b"hello\r\nworld")
            + encode_pub("data", "inbox.1", b"", headers)
            + encode_pub("nobody", "inbox.2", b"?")
            + encode_sub("a..b", None, 9)
            + b"PING\r\n"
        )
        ops = read_ops(sock, parser, until_pong=True)
        sock.sendall(b"FOO\r\n")
        ops += read_ops(sock, parser, until_pong=False)
    info = ops[0]
    assert isinstance(info, Info)
    assert (info.options["version"], info.options["max_payload"]) == ("2.9.10", 1_048_576)
    assert ops[1:] == [
        Msg(b"data", 8, None, -1, b"hello\r\nworld"),
        Msg(b"data", 8, b"inbox.1", len(headers), headers),
        Msg(b"inbox.2", 7, None, 16, status_message_headers(503)),
        Err(ERR_INVALID_SUBJECT, False),
        PONG,
        Err(ERR_UNKNOWN_OP, True),
    ]
