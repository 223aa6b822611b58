"""What applications may send, and the ops ClientParser must return for it.

One table serves two tests: `test_client_parser.py` feeds every case in every chunking, and
`test_conformance.py` replays the same bytes to a real nats-server 2.9.10 and checks that what the server
answers (or its silent close) is exactly what the parser's ops imply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from proxy.nats.protocol import (
    ERR_BAD_CLIENT_PROTOCOL,
    ERR_MAX_CONTROL_LINE,
    ERR_MAX_PAYLOAD,
    ERR_NO_RESPONDERS_REQUIRES_HEADERS,
    ERR_SILENT_CLOSE,
    ERR_UNKNOWN_OP,
    MAX_CONTROL_LINE,
    PING,
    PONG,
    Connect,
    Err,
    Pub,
    Sub,
    Unsub,
)

UNKNOWN = Err(ERR_UNKNOWN_OP, True)
SILENT = Err(ERR_SILENT_CLOSE, True)
MAX_PAYLOAD = Err(ERR_MAX_PAYLOAD, True)
MAX_CONTROL = Err(ERR_MAX_CONTROL_LINE, True)
BAD_PROTOCOL = Err(ERR_BAD_CLIENT_PROTOCOL, True)
NO_RESPONDERS = Err(ERR_NO_RESPONDERS_REQUIRES_HEADERS, True)


def connect(options: dict) -> tuple[bytes, Connect]:
    """A CONNECT line and the op it parses to."""
    return b"CONNECT " + msgspec.json.encode(options) + b"\r\n", Connect(options)


# Quiet (no +OK), lenient (no pedantic subject checks) connections, with and without headers.
C, C_OP = connect({"verbose": False, "pedantic": False})
CH, CH_OP = connect({"verbose": False, "pedantic": False, "headers": True})
CP, CP_OP = connect({"verbose": False, "pedantic": True})


def pub(frame: bytes, subject: str, reply: str | None = None, hdr: int = -1, body_start: int = 0) -> Pub:
    """The Pub for a frame; body_start defaults to just after the first LF."""
    return Pub(subject, reply, hdr, frame, body_start or frame.index(b"\n") + 1)


@dataclass(frozen=True)
class Case:
    """Bytes an application sends (after the server's INFO) and the ops they must parse to."""

    id: str
    data: bytes
    ops: list
    # Offsets at which the conformance test pauses between socket writes, so nats-server sees the
    # bytes split exactly there (its control-line limit is only checked on a split line).
    writes: tuple[int, ...] = ()
    # Only ClientParser sees cases with arguments; nats-server runs with its defaults.
    parser_kwargs: dict = field(default_factory=dict)
    # False for cases whose tail is incomplete (a trailing PING would be read as body).
    server: bool = True
    # Large cases are split at a sample of offsets instead of every one.
    large: bool = False


def arg_of(n: int) -> bytes:
    """A PUB argument of exactly n bytes announcing an empty payload."""
    return b"s" * (n - 2) + b" 0"


LONG_OK = b"PUB " + arg_of(MAX_CONTROL_LINE)
LONG_BAD = b"PUB " + arg_of(MAX_CONTROL_LINE + 1)
BIG = b"x" * 1_048_576

CASES: list[Case] = [
    # --- well-formed traffic
    Case("connect-ping", C + b"PING\r\n", [C_OP, PING]),
    Case("ping-spellings", b"PING\r\nping\r\nPiNg\nPINGxyz\r\n", [PING, PING, PING, PING]),
    Case("ping-trailing-garbage", C + b"PING" + b"x" * 1000 + b"\r\n", [C_OP, PING]),
    Case("pong", C + b"PONG\r\npong x\r\n", [C_OP, PONG, PONG]),
    Case("ok-from-client-ignored", C + b"+OK\r\n+okjunk\r\nPING\r\n", [C_OP, PING]),
    Case("pub", C + b"PUB foo 3\r\nabc\r\n", [C_OP, pub(b"PUB foo 3\r\nabc\r\n", "foo")]),
    Case(
        "pub-reply",
        C + b"PUB foo.bar _INBOX.x 5\r\nhello\r\n",
        [C_OP, pub(b"PUB foo.bar _INBOX.x 5\r\nhello\r\n", "foo.bar", "_INBOX.x")],
    ),
    Case("pub-empty", C + b"PUB foo 0\r\n\r\n", [C_OP, pub(b"PUB foo 0\r\n\r\n", "foo")]),
    Case(
        "pub-repeated",
        C + b"PUB a 1\r\nx\r\n" * 3,
        [C_OP] + [pub(b"PUB a 1\r\nx\r\n", "a")] * 3,
    ),
    Case("pub-lowercase", C + b"pub foo 3\r\nabc\r\n", [C_OP, pub(b"pub foo 3\r\nabc\r\n", "foo")]),
    Case(
        "pub-tabs-and-blank-runs",
        C + b"PUB\tfoo\t \t3\r\nabc\r\nPuB  foo  r  1 \r\nx\r\n",
        [C_OP, pub(b"PUB\tfoo\t \t3\r\nabc\r\n", "foo"), pub(b"PuB  foo  r  1 \r\nx\r\n", "foo", "r")],
    ),
    Case(
        "pub-tab-between-arguments",
        C + b"PUB foo\tbar 3\r\nabc\r\n",
        [C_OP, pub(b"PUB foo\tbar 3\r\nabc\r\n", "foo", "bar")],
    ),
    Case("pub-lf-only-control-line", C + b"PUB foo 3\nabc\r\n", [C_OP, pub(b"PUB foo 3\nabc\r\n", "foo")]),
    Case(
        "pub-crlf-in-body", C + b"PUB foo 5\r\na\r\nbc\r\n", [C_OP, pub(b"PUB foo 5\r\na\r\nbc\r\n", "foo")]
    ),
    Case(
        "pub-nine-digit-size",
        C + b"PUB foo 000000003\r\nabc\r\n",
        [C_OP, pub(b"PUB foo 000000003\r\nabc\r\n", "foo")],
    ),
    Case(
        "pub-cr-inside-arguments",
        C + b"PUB foo\r 3\r\nabc\r\n",
        [C_OP, pub(b"PUB foo\r 3\r\nabc\r\n", "foo\r")],
    ),
    Case(
        "pub-argument-starts-with-lf",
        C + b"PUB \nfoo 3\r\nabc\r\nPING\r\n",
        [C_OP, pub(b"PUB \nfoo 3\r\nabc\r\n", "\nfoo", body_start=len(b"PUB \nfoo 3\r\n")), PING],
    ),
    Case(
        "pub-binary-subject", C + b"PUB f\xffo 1\r\nx\r\n", [C_OP, pub(b"PUB f\xffo 1\r\nx\r\n", "f\udcffo")]
    ),
    Case(
        "hpub",
        CH + b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nab\r\n",
        [CH_OP, pub(b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nab\r\n", "foo", hdr=12)],
    ),
    Case(
        "hpub-reply",
        CH + b"HPUB foo bar 12 14\r\nNATS/1.0\r\n\r\nab\r\n",
        [CH_OP, pub(b"HPUB foo bar 12 14\r\nNATS/1.0\r\n\r\nab\r\n", "foo", "bar", hdr=12)],
    ),
    Case(
        "hpub-zero-header",
        CH + b"HPUB foo 0 3\r\nabc\r\n",
        [CH_OP, pub(b"HPUB foo 0 3\r\nabc\r\n", "foo", hdr=0)],
    ),
    Case(
        "hpub-any-header-bytes",
        CH + b"hpub foo 3 5\r\nabcde\r\n",
        [CH_OP, pub(b"hpub foo 3 5\r\nabcde\r\n", "foo", hdr=3)],
    ),
    Case(
        "sub",
        C + b"SUB foo 1\r\nSUB foo q 2\r\nsub\tfoo\t\tq\t3 \r\nSUB foo\r 4\r\n",
        [C_OP, Sub("foo", None, "1"), Sub("foo", "q", "2"), Sub("foo", "q", "3"), Sub("foo", None, "4")],
    ),
    Case(
        "sub-subjects-judged-by-the-shell",
        C + b"SUB foo..bar 1\r\nSUB foo.>.bar 2\r\nSUB foo.> 3\r\n"
        b"SUB foo.b*r 4\r\nSUB .foo 5\r\nSUB a\x0cb q.* 6\r\n",
        [
            C_OP,
            Sub("foo..bar", None, "1"),
            Sub("foo.>.bar", None, "2"),
            Sub("foo.>", None, "3"),
            Sub("foo.b*r", None, "4"),
            Sub(".foo", None, "5"),
            Sub("a\x0cb", "q.*", "6"),
        ],
    ),
    Case(
        "pedantic-publish-subjects-judged-by-the-shell",
        CP + b"PUB foo.* 1\r\na\r\nPUB foo..bar 1\r\na\r\nPUB foo.bar 1\r\na\r\nPUB a\x0cb 1\r\na\r\n",
        [
            CP_OP,
            pub(b"PUB foo.* 1\r\na\r\n", "foo.*"),
            pub(b"PUB foo..bar 1\r\na\r\n", "foo..bar"),
            pub(b"PUB foo.bar 1\r\na\r\n", "foo.bar"),
            pub(b"PUB a\x0cb 1\r\na\r\n", "a\x0cb"),
        ],
    ),
    Case(
        "defaults-before-connect",
        b"SUB foo 1\r\nPUB foo.* 1\r\na\r\nUNSUB 1\r\n",
        [Sub("foo", None, "1"), pub(b"PUB foo.* 1\r\na\r\n", "foo.*"), Unsub("1", None)],
    ),
    Case(
        "unsub",
        C + b"UNSUB 1\r\nUNSUB 2 5\r\nUNSUB\t3\t0\r\nunsub 4 x\r\nUNSUB 5 0000000005\r\n",
        [C_OP, Unsub("1", None), Unsub("2", 5), Unsub("3", None), Unsub("4", None), Unsub("5", None)],
    ),
    Case("connect-without-blank", b'CONNECT{"verbose":false}\r\n', [Connect({"verbose": False})]),
    Case("connect-null", C + b"CONNECT null\r\n", [C_OP, Connect({})]),
    Case(
        "connect-unknown-fields-ignored",
        b'CONNECT {"verbose":false,"foo":[1,2],"remote_account":1,"proxy_sig":2}\r\n',
        [Connect({"verbose": False, "foo": [1, 2], "remote_account": 1, "proxy_sig": 2})],
    ),
    Case("connect-lf-only", b'connect {"verbose":false}\n', [Connect({"verbose": False})]),
    Case(
        "connect-null-fields-and-permissions",
        b'CONNECT {"verbose":false,"protocol":null,"import":{"allow":["x",null]},"export":null}\r\n',
        [Connect({"verbose": False, "protocol": None, "import": {"allow": ["x", None]}, "export": None})],
    ),
    Case(
        "connect-options-accumulate",
        b'CONNECT {"verbose":false,"headers":true}\r\nCONNECT {"name":"x"}\r\nHPUB foo 0 0\r\n\r\n',
        [
            Connect({"verbose": False, "headers": True}),
            Connect({"name": "x"}),
            pub(b"HPUB foo 0 0\r\n\r\n", "foo", hdr=0),
        ],
    ),
    Case(
        "connect-keys-case-insensitive",
        b'CONNECT {"VERBOSE":false,"Headers":true}\r\nHPUB foo 0 0\r\n\r\n',
        [Connect({"VERBOSE": False, "Headers": True}), pub(b"HPUB foo 0 0\r\n\r\n", "foo", hdr=0)],
    ),
    Case(
        "connect-invalid-utf8-replaced",
        b'CONNECT {"verbose":false,"name":"\xff"}\r\n',
        [Connect({"verbose": False, "name": "\ufffd"})],
    ),
    Case("info-from-client-ignored", C + b'INFO {"port":1}\r\nINFO null\r\nINFO{}\r\n', [C_OP]),
    Case("hmsg-from-client-swallowed", C + b"HMSG x y\r\n\r\nPING\r\n", [C_OP, PING]),
    # --- limits
    Case(
        "control-line-exactly-max",
        C + LONG_OK + b"\r\n\r\n",
        [C_OP, pub(LONG_OK + b"\r\n\r\n", "s" * (MAX_CONTROL_LINE - 2))],
        writes=(len(C + LONG_OK),),
    ),
    Case(
        "control-line-max-cr-not-counted",
        C + LONG_OK + b"\r\n\r\n",
        [C_OP, pub(LONG_OK + b"\r\n\r\n", "s" * (MAX_CONTROL_LINE - 2))],
        writes=(len(C + LONG_OK) + 1,),
    ),
    Case(
        "control-line-over-max", C + LONG_BAD + b"\r\n\r\n", [C_OP, MAX_CONTROL], writes=(len(C + LONG_BAD),)
    ),
    Case(
        "control-line-over-max-sub",
        C + b"SUB " + b"s" * (MAX_CONTROL_LINE - 1) + b" 1\r\n",
        [C_OP, MAX_CONTROL],
        writes=(len(C) + 4 + MAX_CONTROL_LINE + 1,),
    ),
    Case(
        "control-line-over-max-connect",
        b"CONNECT {" + b" " * (MAX_CONTROL_LINE - 1) + b"}\r\n",
        [MAX_CONTROL],
        writes=(8 + MAX_CONTROL_LINE + 1,),
    ),
    Case(
        "control-line-blanks-before-argument-not-counted",
        C + b"PUB" + b" " * 1000 + arg_of(MAX_CONTROL_LINE) + b"\r\n\r\n",
        [
            C_OP,
            pub(b"PUB" + b" " * 1000 + arg_of(MAX_CONTROL_LINE) + b"\r\n\r\n", "s" * (MAX_CONTROL_LINE - 2)),
        ],
        writes=(len(C) + 1003 + MAX_CONTROL_LINE,),
    ),
    Case(
        "payload-exactly-max",
        C + b"PUB foo 1048576\r\n" + BIG + b"\r\n",
        [C_OP, pub(b"PUB foo 1048576\r\n" + BIG + b"\r\n", "foo")],
        large=True,
    ),
    Case("payload-over-max", C + b"PUB foo 1048577\r\n", [C_OP, MAX_PAYLOAD]),
    Case("payload-over-max-hpub", CH + b"HPUB foo 3 1048577\r\n", [CH_OP, MAX_PAYLOAD]),
    Case(
        "small-limits-ok",
        b"PUB foo 8\r\n12345678\r\nPUB " + arg_of(16) + b"\r\n\r\n",
        [pub(b"PUB foo 8\r\n12345678\r\n", "foo"), pub(b"PUB " + arg_of(16) + b"\r\n\r\n", "s" * 14)],
        parser_kwargs={"max_payload": 8, "max_control_line": 16},
    ),
    Case("small-payload-over", b"PUB foo 9\r\n", [MAX_PAYLOAD], parser_kwargs={"max_payload": 8}),
    Case(
        "small-control-line-over",
        b"PUB " + arg_of(17) + b"\r\n\r\n",
        [MAX_CONTROL],
        parser_kwargs={"max_control_line": 16},
    ),
    Case(
        "no-payload-limit",
        b"PUB foo 9\r\n123456789\r\n",
        [pub(b"PUB foo 9\r\n123456789\r\n", "foo")],
        parser_kwargs={"max_payload": -1},
    ),
    # The cap counts the whole line but its LF: keyword, blanks, garbage and CR.
    Case(
        "garbage-over-memory-cap",
        b"PING" + b"x" * (16 + 1024 - 4) + b"\r\n",
        [MAX_CONTROL],
        parser_kwargs={"max_control_line": 16},
    ),
    Case(
        "garbage-over-memory-cap-before-lf",
        b"PING" + b"x" * (16 + 1024 - 3),
        [MAX_CONTROL],
        parser_kwargs={"max_control_line": 16},
    ),
    Case(
        "garbage-under-memory-cap",
        b"PING" + b"x" * (16 + 1024 - 5) + b"\r\n",
        [PING],
        parser_kwargs={"max_control_line": 16},
    ),
    # --- errors nats-server reports with -ERR
    Case("unknown-op", C + b"FOO\r\nPING\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-before-lf", C + b"PUX", [C_OP, UNKNOWN]),
    Case("unknown-op-pin", C + b"PIN\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-pub-without-blank", C + b"PUB\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-pubx", C + b"PUBX foo 1\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-sub-without-blank", C + b"SUB\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-unsub-without-blank", C + b"UNSUB\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-err-without-blank", C + b"-ERR\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-leading-blank", C + b" PING\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-empty-line", C + b"\r\nPING\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-msg-from-client", C + b"MSG foo 1 3\r\nabc\r\n", [C_OP, UNKNOWN]),
    Case("unknown-op-hmsg-with-body", C + b"HMSG foo 1 3\r\nabc\r\n", [C_OP, UNKNOWN]),
    Case("ops-after-fatal-error-dropped", C + b"FOO\r\nPING\r\nPUB a 1\r\nx\r\n", [C_OP, UNKNOWN]),
    Case("body-longer-than-size", C + b"PUB foo 3\r\nabcd\r\n", [C_OP, UNKNOWN]),
    Case("body-shorter-than-size", C + b"PUB foo 3\r\nab\r\n", [C_OP, UNKNOWN]),
    Case("body-ends-with-lf-only", C + b"PUB foo 3\r\nabc\nPING\r\n", [C_OP, UNKNOWN]),
    Case("body-followed-by-garbage", C + b"PUB foo 3\r\nabcX", [C_OP, UNKNOWN]),
    Case("body-followed-by-cr-garbage", C + b"PUB foo 3\r\nabc\rX", [C_OP, UNKNOWN]),
    Case("connect-protocol-too-high", b'CONNECT {"protocol":2}\r\n', [BAD_PROTOCOL]),
    Case("connect-protocol-negative", b'CONNECT {"protocol":-1}\r\n', [BAD_PROTOCOL]),
    Case("connect-protocol-upper-case-key", b'CONNECT {"PROTOCOL":5}\r\n', [BAD_PROTOCOL]),
    Case("connect-no-responders-without-headers", b'CONNECT {"no_responders":true}\r\n', [NO_RESPONDERS]),
    Case(
        "connect-headers-withdrawn-under-no-responders",
        b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nCONNECT {"headers":false}\r\n',
        [Connect({"verbose": False, "headers": True, "no_responders": True}), NO_RESPONDERS],
    ),
    # --- errors after which nats-server closes without a word
    Case("pub-one-argument", C + b"PUB foo\r\n", [C_OP, SILENT]),
    # parser.go drops the argument's last byte once it has seen a CR: here the "3", not a CR.
    Case("pub-cr-inside-arguments-lf-only", C + b"PUB foo\r 3\nabc\r\n", [C_OP, SILENT]),
    Case("sub-cr-inside-arguments-lf-only", C + b"SUB foo\r 1\n", [C_OP, SILENT]),
    Case("pub-four-arguments", C + b"PUB foo a b 3\r\n", [C_OP, SILENT]),
    Case("pub-blank-argument", C + b"PUB \r\n", [C_OP, SILENT]),
    Case("pub-size-not-a-number", C + b"PUB foo x\r\n", [C_OP, SILENT]),
    Case("pub-size-negative", C + b"PUB foo -1\r\n", [C_OP, SILENT]),
    Case("pub-size-plus-sign", C + b"PUB foo +3\r\n", [C_OP, SILENT]),
    Case("pub-size-ten-digits", C + b"PUB foo 0000000003\r\n", [C_OP, SILENT]),
    Case("hpub-without-headers", C + b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nab\r\n", [C_OP, SILENT]),
    Case("hpub-before-connect", b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nab\r\n", [SILENT]),
    Case("hpub-over-max-without-headers", C + b"HPUB foo 3 1048577\r\n", [C_OP, SILENT]),
    Case("hpub-two-arguments", CH + b"HPUB foo 12\r\n", [CH_OP, SILENT]),
    Case("hpub-five-arguments", CH + b"HPUB foo a b 1 3\r\n", [CH_OP, SILENT]),
    Case("hpub-header-size-not-a-number", CH + b"HPUB foo x 3\r\n", [CH_OP, SILENT]),
    Case("hpub-total-not-a-number", CH + b"HPUB foo 3 x\r\n", [CH_OP, SILENT]),
    Case("hpub-header-larger-than-total", CH + b"HPUB foo 5 3\r\n", [CH_OP, SILENT]),
    Case("hpub-bad-header-size-before-max-payload", CH + b"HPUB foo x 1048577\r\n", [CH_OP, SILENT]),
    Case("sub-one-argument", C + b"SUB foo\r\n", [C_OP, SILENT]),
    Case("sub-four-arguments", C + b"SUB foo q 1 x\r\n", [C_OP, SILENT]),
    Case("unsub-three-arguments", C + b"UNSUB 1 2 3\r\n", [C_OP, SILENT]),
    Case("unsub-blank-argument", C + b"UNSUB \r\n", [C_OP, SILENT]),
    Case("err-from-client", C + b"-ERR 'x'\r\n", [C_OP, SILENT]),
    Case("connect-bad-json", b"CONNECT {foo\r\n", [SILENT]),
    Case("connect-array", b"CONNECT []\r\n", [SILENT]),
    Case("connect-number", b"CONNECT 1\r\n", [SILENT]),
    Case("connect-blank", b"CONNECT \r\n", [SILENT]),
    Case("connect-bare", b"CONNECT\r\n", [SILENT]),
    Case("connect-trailing-garbage", b"CONNECT {} x\r\n", [SILENT]),
    Case("connect-bool-as-string", b'CONNECT {"verbose":"yes"}\r\n', [SILENT]),
    Case("connect-string-as-number", b'CONNECT {"name":1}\r\n', [SILENT]),
    Case("connect-protocol-float", b'CONNECT {"protocol":1.0}\r\n', [SILENT]),
    Case("connect-protocol-overflow", b'CONNECT {"protocol":99999999999999999999}\r\n', [SILENT]),
    Case("connect-permission-not-a-list", b'CONNECT {"import":{"allow":"x"}}\r\n', [SILENT]),
    Case("connect-permission-not-an-object", b'CONNECT {"export":[]}\r\n', [SILENT]),
    Case("info-bad-json", C + b"INFO {x\r\n", [C_OP, SILENT]),
    Case("info-array", C + b"INFO []\r\n", [C_OP, SILENT]),
    # --- incomplete input: nothing yet (not replayed to nats-server: a trailing PING would be body)
    Case("incomplete-control-line", C + b"PUB foo", [C_OP], server=False),
    Case("incomplete-body", C + b"PUB foo 3\r\nab", [C_OP], server=False),
    Case("incomplete-terminator", C + b"PUB foo 3\r\nabc\r", [C_OP], server=False),
    Case("incomplete-argument-after-lf", C + b"PUB \nfoo 3", [C_OP], server=False),
]
