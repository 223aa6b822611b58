"""Sans-I/O NATS wire codec: bytes in, typed ops out, plus encoders.

No sockets, no asyncio, no clocks. `ClientParser` is the server side of an application connection and
reproduces nats-server 2.9's client parser (`server/parser.go`, `server/client.go`): the same ops, the same
`-ERR` texts and the same verdict on what closes the connection. `ServerParser` is the client side of the
sidecar's upstream connection. Both scan with `find(b"\\n", pos)` and move an index, keep only the unparsed
tail, and copy bytes only when a frame straddles two reads.

Speed: in `batch` mode the client parser hands runs of plain PUBs to `scan_pubs` from the optional C
module `proxy.nats._speedups` when it is built (`SPEEDUPS`), which counts them without a Python object per
frame; it stops at anything it is not sure about and the Python code below takes over, so the ops and
errors are the same with and without it (the protocol tests run both). In the other direction the server
parser in `batch` mode returns runs of plain MSG frames as one `MsgRun` (`scan_msgs`), which the sidecar
hands to `route_msgs` to rewrite each frame's sid straight into its application's buffer.
`KPI_SIDECAR_NO_EXTENSIONS=1` turns all of it off.

Error conventions: a protocol error becomes `Err(text, fatal)` in sequence in the op list; after a fatal one
the parser is dead and returns no more ops. `Err.text == ""` means nats-server closes the connection without
sending any `-ERR` (it only logs), and `encode_err("")` is `b""` to match.

Known, deliberate differences from nats-server 2.9 (only reachable by hand-crafted input):
- nats-server enforces `max_control_line` only when a control line is split across two socket reads, so
  its verdict depends on TCP segmentation; here every control line whose argument exceeds the limit is
  refused, so the verdict never depends on how the bytes were chunked.
- nats-server accepts unbounded garbage after `PING`/`PONG`/`+OK` and unbounded blanks before arguments;
  here a whole control line is capped at `max_control_line + 1024` bytes to bound memory.
- nats-server type-checks an `INFO` sent by a client against its Info struct; here only the JSON syntax
  and the top-level type are checked.
- A stray CR inside arguments is handled as nats-server does when the line arrives in one read.
- A client's `HMSG <anything>\\r\\n\\r\\n` is swallowed without an op; nats-server treats it as an empty
  publish and answers `+OK` in verbose mode.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import msgspec

from proxy.errors import ProtocolError

ScanPubs = Callable[[bytes, int, dict, int, int, bool, dict, dict], int]
ScanMsgs = Callable[[bytes, int, int], int]
RouteMsgs = Callable[[bytes, int, dict, dict], int]
SelectFrames = Callable[[bytes, list], "tuple[bytes, bytes] | None"]
scan_pubs: ScanPubs | None = None
scan_msgs: ScanMsgs | None = None
route_msgs: RouteMsgs | None = None
select_frames: SelectFrames | None = None
if not os.environ.get("KPI_SIDECAR_NO_EXTENSIONS"):
    try:
        from proxy.nats._speedups import route_msgs, scan_msgs, scan_pubs, select_frames
    except ImportError:  # not built (no C compiler at install time): the pure-Python parser alone
        scan_pubs = scan_msgs = route_msgs = select_frames = None
SPEEDUPS = scan_pubs is not None

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "ERR_BAD_CLIENT_PROTOCOL",
    "ERR_INVALID_PUBLISH_SUBJECT",
    "ERR_INVALID_SUBJECT",
    "ERR_MAX_CONTROL_LINE",
    "ERR_MAX_PAYLOAD",
    "ERR_MAX_SUBSCRIPTIONS",
    "ERR_NO_RESPONDERS_REQUIRES_HEADERS",
    "ERR_PARSER",
    "ERR_SILENT_CLOSE",
    "ERR_UNKNOWN_OP",
    "MAX_CONTROL_LINE",
    "MAX_SERVER_CONTROL_LINE",
    "OK",
    "OK_FRAME",
    "PING",
    "PING_FRAME",
    "PONG",
    "PONG_FRAME",
    "SPEEDUPS",
    "ClientOp",
    "ClientParser",
    "Connect",
    "Err",
    "Info",
    "Msg",
    "MsgRun",
    "Ok",
    "Ping",
    "Pong",
    "Pub",
    "PubRun",
    "ServerOp",
    "ServerParser",
    "Sub",
    "Unsub",
    "add_header",
    "encode_connect",
    "encode_err",
    "encode_info",
    "encode_msg",
    "encode_pub",
    "encode_sub",
    "encode_unsub",
    "header_value",
    "is_valid_publish_subject",
    "is_valid_subject",
    "next_msg",
    "route_msgs",
    "select_frames",
    "split_pub",
    "status_message_headers",
]

MAX_CONTROL_LINE = 4096
DEFAULT_MAX_PAYLOAD = 1_048_576
# Upstream INFO lines grow with the cluster (connect_urls) and MSG lines carry two subjects, so the
# client side of the upstream connection only needs a memory bound, not nats-server's 4 KiB.
MAX_SERVER_CONTROL_LINE = 1_048_576

# -ERR texts exactly as nats-server 2.9.10 sends them (verified against the binary; see
# tests/protocol/test_conformance.py).
ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"
ERR_MAX_CONTROL_LINE = "maximum control line exceeded"
ERR_BAD_CLIENT_PROTOCOL = "invalid client protocol"
ERR_NO_RESPONDERS_REQUIRES_HEADERS = "no responders requires headers support"
# Non-fatal ones the shell sends itself: SUB on a bad subject, PUB on a bad subject in pedantic mode.
ERR_INVALID_SUBJECT = "Invalid Subject"
ERR_INVALID_PUBLISH_SUBJECT = "Invalid Publish Subject"
ERR_MAX_SUBSCRIPTIONS = "maximum subscriptions exceeded"
# Malformed PUB/HPUB/SUB/UNSUB arguments, bad CONNECT JSON, HPUB without headers, -ERR from a client:
# nats-server logs the reason and closes the socket without a word.
ERR_SILENT_CLOSE = ""
# Malformed data from the upstream server (never sent to anyone, only logged by the shell).
ERR_PARSER = "Parser Error"

PING_FRAME = b"PING\r\n"
PONG_FRAME = b"PONG\r\n"
OK_FRAME = b"+OK\r\n"

_CR = 13
_LF = 10
# Blanks and garbage around the arguments do not count against max_control_line in nats-server; this
# bounds how much of them is buffered.
_LINE_SLACK = 1024
_CACHE_MAX = 4096
_NEED_MORE = -1
_SKIP_ARGS = -2


# --------------------------------------------------------------------------------------------------- ops


class Connect(msgspec.Struct, frozen=True, gc=False):
    """CONNECT from an application: its JSON options object, as sent (keys not normalised)."""

    options: dict


class Ping(msgspec.Struct, frozen=True, gc=False):
    """PING from either side; use the `PING` singleton."""


class Pong(msgspec.Struct, frozen=True, gc=False):
    """PONG from either side; use the `PONG` singleton."""


class Ok(msgspec.Struct, frozen=True, gc=False):
    """+OK from the server; use the `OK` singleton."""


PING = Ping()
PONG = Pong()
OK = Ok()


class Pub(msgspec.Struct, frozen=True, gc=False):
    """PUB or HPUB from an application; `frame` is the whole op as received, ready to forward verbatim."""

    subject: str
    reply: str | None
    hdr_size: int
    frame: bytes
    body_start: int

    @property
    def headers(self) -> bytes | None:
        """The header block ("NATS/1.0\\r\\n...\\r\\n\\r\\n") of an HPUB, None for a PUB."""
        if self.hdr_size < 0:
            return None
        return self.frame[self.body_start : self.body_start + self.hdr_size]

    @property
    def payload(self) -> bytes:
        """The payload, without headers and without the trailing CRLF."""
        start = self.body_start + self.hdr_size if self.hdr_size > 0 else self.body_start
        return self.frame[start:-2]

    @property
    def size(self) -> int:
        """Total body size (headers + payload), as announced in the control line."""
        return len(self.frame) - self.body_start - 2


_NO_REQUESTS: dict[str, int] = {}
_NO_PRIORITIES: dict[tuple[str, int, int], int] = {}
# KPI-Priority header values (ASCII letters, any case) -> the code a PubRun counts them by (1-4: the
# policies' Priority values; 0 and absent: the subject's rule decides).
PRIORITY_CODES: dict[bytes, int] = {b"low": 1, b"medium": 2, b"high": 3, b"critical": 4}
PRIORITY_LABELS: tuple[str, ...] = ("", "low", "medium", "high", "critical")


class PubRun(msgspec.Struct, frozen=True, gc=False):
    """Consecutive PUBs and HPUBs from a parser with `batch` on: their frames as one bytes object, the
    count per subject, the total, per subject the count of those with a reply subject (requests, by
    their protocol role), and per (subject, priority code, request 0/1) the count of those a
    `KPI-Priority` header gives a priority (code 1-4, PRIORITY_LABELS; they are in counts too)."""

    frames: bytes
    counts: dict[str, int]
    n: int
    requests: dict[str, int] = msgspec.field(default_factory=dict)
    priorities: dict[tuple[str, int, int], int] = msgspec.field(default_factory=dict)


class MsgRun(msgspec.Struct, frozen=True, gc=False):
    """Consecutive plain MSGs (no headers) from a server parser with `batch` on, as nats-server wrote
    them: canonical frames, read one by one with `next_msg`, or routed in C with `route_msgs`."""

    frames: bytes


class Sub(msgspec.Struct, frozen=True, gc=False):
    """SUB from an application."""

    subject: str
    queue: str | None
    sid: str


class Unsub(msgspec.Struct, frozen=True, gc=False):
    """UNSUB from an application; `max_msgs` is None when nats-server would unsubscribe at once."""

    sid: str
    max_msgs: int | None


class Err(msgspec.Struct, frozen=True, gc=False):
    """A protocol error in sequence: `text` as in `-ERR '<text>'` ("" = close silently), `fatal` = close."""

    text: str
    fatal: bool


class Info(msgspec.Struct, frozen=True, gc=False):
    """INFO from the upstream server: its JSON options object."""

    options: dict


class Msg(msgspec.Struct, frozen=True, gc=False):
    """MSG or HMSG from the upstream server; `body` is headers + payload without the trailing CRLF."""

    subject: bytes
    sid: int
    reply: bytes | None
    hdr_size: int
    body: bytes

    @property
    def headers(self) -> bytes | None:
        """The header block of an HMSG, None for a MSG."""
        return None if self.hdr_size < 0 else self.body[: self.hdr_size]

    @property
    def payload(self) -> bytes:
        """The payload without headers."""
        return self.body[self.hdr_size :] if self.hdr_size > 0 else self.body


ClientOp = Connect | Ping | Pong | Pub | PubRun | Sub | Unsub | Err
ServerOp = Info | Msg | MsgRun | Ping | Pong | Ok | Err


# --------------------------------------------------------------------------------------- op keywords

_SEP, _BLANKS, _SKIP = 0, 1, 2  # what follows the keyword: one blank required / any blanks / ignored
(_K_PUB, _K_HPUB, _K_SUB, _K_UNSUB, _K_CONNECT, _K_INFO, _K_PING, _K_PONG, _K_OK, _K_ERR, _K_MSG, _K_HMSG) = (
    range(12)
)

# nats-server accepts these from a CLIENT connection; an HMSG there is a quirk kept for fidelity.
_CLIENT_OPS = (
    (b"PUB", _K_PUB, _SEP),
    (b"PING", _K_PING, _SKIP),
    (b"PONG", _K_PONG, _SKIP),
    (b"HPUB", _K_HPUB, _SEP),
    (b"HMSG", _K_HMSG, _SEP),
    (b"SUB", _K_SUB, _SEP),
    (b"UNSUB", _K_UNSUB, _SEP),
    (b"CONNECT", _K_CONNECT, _BLANKS),
    (b"INFO", _K_INFO, _BLANKS),
    (b"+OK", _K_OK, _SKIP),
    (b"-ERR", _K_ERR, _SEP),
)
_SERVER_OPS = (
    (b"MSG", _K_MSG, _SEP),
    (b"HMSG", _K_HMSG, _SEP),
    (b"PING", _K_PING, _SKIP),
    (b"PONG", _K_PONG, _SKIP),
    (b"INFO", _K_INFO, _BLANKS),
    (b"+OK", _K_OK, _SKIP),
    (b"-ERR", _K_ERR, _SEP),
)
_BLANK_RUN = re.compile(rb"[ \t]*")


def _match_op(buf: bytes, pos: int, end: int, table: tuple) -> tuple[int, int, int] | None:
    """(kind, mode, index after keyword), None if buf[pos:end] is a proper prefix of a keyword."""
    head = buf[pos : min(end, pos + 7)].upper()
    for keyword, kind, mode in table:
        if head.startswith(keyword):
            return kind, mode, pos + len(keyword)
        if len(head) < len(keyword) and keyword.startswith(head):
            return None
    raise ProtocolError(ERR_UNKNOWN_OP)


def _arg_start(buf: bytes, i: int, end: int, mode: int) -> int:
    """Index of the first argument byte after the keyword ending at i, or _NEED_MORE."""
    if mode == _SEP:
        if i >= end:
            return _NEED_MORE
        if buf[i] != 32 and buf[i] != 9:
            raise ProtocolError(ERR_UNKNOWN_OP)
        i += 1
    i = _BLANK_RUN.match(buf, i, end).end()
    # Like parser.go, the first non-blank byte opens the argument even when it is CR or LF.
    return i if i < end else _NEED_MORE


def _split_blanks(arg: bytes) -> list[bytes]:
    """nats-server's processPub splitting: runs of spaces and tabs."""
    return [t for t in arg.replace(b"\t", b" ").split(b" ") if t]


def _split_arg(arg: bytes) -> list[bytes]:
    """nats-server's splitArg (SUB, UNSUB): runs of space, tab, CR and LF."""
    return [t for t in arg.replace(b"\t", b" ").replace(b"\r", b" ").replace(b"\n", b" ").split(b" ") if t]


# int(bytes) is slow, and sizes and sids repeat: remember them.
_NUMBERS: dict[bytes, int] = {}


def _parse_uint(tok: bytes) -> int:
    """A decimal of 1 to 18 ASCII digits, else -1."""
    value = _NUMBERS.get(tok)
    if value is None:
        value = int(tok) if 0 < len(tok) <= 18 and tok.isdigit() else -1
        if len(_NUMBERS) >= _CACHE_MAX:
            _NUMBERS.clear()
        _NUMBERS[tok] = value
    return value


def _parse_size(tok: bytes) -> int:
    """nats-server's parseSize: 1 to 9 ASCII digits, else -1."""
    return _parse_uint(tok) if len(tok) <= 9 else -1


def _header_priority(buf: bytes, start: int, hdr_size: int) -> int:
    """The priority code a header block gives its message, as `header_value` and `Engine.classify` read
    it: 1-4 (PRIORITY_CODES), 0 for no KPI-Priority header or another word, -1 when the value holds
    anything but ASCII letters (that message is decided on its own, outside a run). The C scanner's
    `header_priority` is the same function."""
    block = buf[start : start + hdr_size]
    at = block.lower().find(b"\r\nkpi-priority:")
    if at < 0:
        return 0
    at += 15
    stop = block.find(b"\r\n", at)
    value = block[at : stop if stop >= 0 else len(block)].strip(b" \t")
    if not value:
        return 0
    if not value.isalpha():
        return -1
    return PRIORITY_CODES.get(value.lower(), 0)


def _str(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        # nats-server accepts any bytes in a subject; surrogateescape keeps them round-trippable.
        return b.decode("utf-8", "surrogateescape")


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------------- CONNECT checks

_BOOL, _STRING, _INT, _PERMISSION = range(4)
# nats-server 2.9.10 ClientOpts; encoding/json matches keys case-insensitively and ignores unknown ones.
_CONNECT_FIELDS = {
    "echo": _BOOL,
    "verbose": _BOOL,
    "pedantic": _BOOL,
    "tls_required": _BOOL,
    "nkey": _STRING,
    "jwt": _STRING,
    "sig": _STRING,
    "auth_token": _STRING,
    "user": _STRING,
    "pass": _STRING,
    "name": _STRING,
    "lang": _STRING,
    "version": _STRING,
    "protocol": _INT,
    "account": _STRING,
    "new_account": _BOOL,
    "headers": _BOOL,
    "no_responders": _BOOL,
    "import": _PERMISSION,
    "export": _PERMISSION,
}


def _decode_json_object(arg: bytes) -> dict:
    """Decode as Go's json.Unmarshal into a struct would: object or null, else a silent close."""
    try:
        # Go replaces invalid UTF-8 inside strings instead of failing.
        value = msgspec.json.decode(arg.decode("utf-8", "replace"))
    except msgspec.DecodeError as err:
        raise ProtocolError(ERR_SILENT_CLOSE) from err
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(ERR_SILENT_CLOSE)
    return value


def _go_type_ok(kind: int, value: object) -> bool:
    """Whether encoding/json would store value into a Go field of this kind without an error."""
    if value is None:
        return True
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STRING:
        return isinstance(value, str)
    if kind == _INT:
        return type(value) is int and -(1 << 63) <= value < (1 << 63)
    if not isinstance(value, dict):
        return False
    for key, lst in value.items():
        if key.lower() not in ("allow", "deny") or lst is None:
            continue
        if not isinstance(lst, list) or not all(s is None or isinstance(s, str) for s in lst):
            return False
    return True


# ------------------------------------------------------------------------------------ shared machinery


class _Parser:
    """Buffering shared by both directions: unparsed tail, partial control line, frame awaiting its body."""

    __slots__ = (
        "_arg_at",
        "_buf",
        "_cache",
        "_cr",
        "_dead",
        "_have",
        "_last",
        "_last_line",
        "_need",
        "_parts",
        "_pend",
        "max_control_line",
    )
    _OPS: tuple = ()

    def __init__(self, max_control_line: int) -> None:
        self.max_control_line = max_control_line
        self._buf = b""  # unparsed tail; always starts at an op boundary
        self._pend: tuple | None = None  # parsed control line whose body is still arriving
        self._need = 0  # full frame length awaited for _pend
        self._have = 0  # bytes of that frame held in _buf + _parts
        self._parts: list[bytes] = []  # later chunks of a long body, joined once complete
        self._arg_at = _NEED_MORE  # partial line: where its argument starts (or _SKIP_ARGS)
        self._cr = False  # partial line: a CR was seen inside the argument
        self._dead = False
        self._cache: dict[bytes, tuple] = {}  # canonical control line -> parsed fields
        self._last_line = b"\x00\x00"  # the previous hot control line, matched without a scan
        self._last: tuple = ()

    # -- filled in by each direction. An entry is a parsed MSG/PUB control line ending in (size, line_len).
    def _parse(self, buf: bytes, pos: int, ops: list) -> None:
        raise NotImplementedError

    def _control(self, buf: bytes, pos: int, eol: int, ops: list) -> int:
        raise NotImplementedError

    def _emit(self, entry: tuple, buf: bytes, pos: int, end: int, ops: list) -> None:
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        """Bytes held for an op that is not complete yet (the unparsed tail)."""
        return self._have if self._pend is not None else len(self._buf)

    def _feed(self, data: bytes) -> list:
        if self._dead or not data:
            return []
        if type(data) is not bytes:
            # Slices must be bytes: frames are forwarded and control lines are cache keys.
            data = bytes(data)
        ops: list = []
        try:
            if self._pend is not None:
                pos = self._finish_body(data, 0, ops)
            elif self._buf:
                data, pos = self._finish_line(data, ops)
            else:
                pos = 0
            if pos >= 0:
                self._parse(data, pos, ops)
        except ProtocolError as err:
            ops.append(Err(err.err_text, err.fatal))
            if err.fatal:
                self._die()
        return ops

    def _die(self) -> None:
        self._dead = True
        self._buf = b""
        self._parts = []
        self._pend = None
        self._cache = {}

    # -- a control line that arrived in pieces
    def _stash_line(self, buf: bytes, pos: int) -> None:
        self._buf = buf[pos:] if pos else buf
        self._probe_line()

    def _probe_line(self) -> None:
        """Validate the partial control line in _buf as far as it goes, as parser.go does byte by byte."""
        buf = self._buf
        n = len(buf)
        self._arg_at = _NEED_MORE
        found = _match_op(buf, 0, n, self._OPS)
        if found is None:
            return
        _kind, mode, i = found
        if mode == _SKIP:
            self._arg_at = _SKIP_ARGS
        else:
            self._arg_at = _arg_start(buf, i, n, mode)
        if n > self.max_control_line + _LINE_SLACK:
            raise ProtocolError(ERR_MAX_CONTROL_LINE)
        if self._arg_at >= 0:
            self._cr = buf.find(b"\r", self._arg_at + 1) >= 0
            if n - self._arg_at - self._cr > self.max_control_line:
                raise ProtocolError(ERR_MAX_CONTROL_LINE)

    def _finish_line(self, data: bytes, ops: list) -> tuple[bytes, int]:
        """Complete the partial control line in _buf with data; return where parsing of data resumes."""
        j = data.find(b"\n")
        if j < 0:
            # Only the new bytes are examined: the old tail was searched already.
            self._buf += data
            if self._arg_at == _NEED_MORE:
                self._probe_line()
                return data, -1
            if len(self._buf) > self.max_control_line + _LINE_SLACK:
                raise ProtocolError(ERR_MAX_CONTROL_LINE)
            if self._arg_at >= 0:
                self._cr = self._cr or b"\r" in data
                if len(self._buf) - self._arg_at - self._cr > self.max_control_line:
                    raise ProtocolError(ERR_MAX_CONTROL_LINE)
            return data, -1
        tail = self._buf
        self._buf = b""
        if self._arg_at >= 0 and tail[self._arg_at] == _LF:
            # The argument itself began with LF (parser.go allows it), so the line ends further on.
            return tail + data, 0
        # Only the straddling control line is copied, not the rest of data.
        head = tail + data[: j + 1]
        if self._control(head, 0, len(head) - 1, ops) >= 0:
            return data, j + 1
        if self._pend is not None:
            return data, self._finish_body(data, j + 1, ops)
        # This very LF opened the argument: the line goes on in data.
        self._buf = b""
        return tail + data, 0

    # -- a frame whose body arrives in pieces
    def _stash_body(self, buf: bytes, pos: int, entry: tuple, frame_len: int) -> None:
        tail = buf[pos:] if pos else buf
        self._buf = tail
        self._pend = entry
        self._need = frame_len
        self._have = len(tail)
        self._parts = []
        if len(tail) == frame_len - 1 and tail[-1] != _CR:
            raise ProtocolError(ERR_UNKNOWN_OP)

    def _finish_body(self, data: bytes, off: int, ops: list) -> int:
        """Feed data[off:] to the frame awaiting its body; return where parsing resumes, -1 if not done."""
        missing = self._need - self._have
        avail = len(data) - off
        if avail < missing:
            chunk = data[off:] if off else data
            cr_at = self._need - 2 - self._have
            if 0 <= cr_at < avail and chunk[cr_at] != _CR:
                raise ProtocolError(ERR_UNKNOWN_OP)
            self._parts.append(chunk)
            self._have += avail
            return -1
        end = off + missing
        frame = b"".join((self._buf, *self._parts, data[off:end]))
        entry = self._pend
        self._buf = b""
        self._parts = []
        self._pend = None
        if frame[-2] != _CR or frame[-1] != _LF:
            raise ProtocolError(ERR_UNKNOWN_OP)
        self._emit(entry, frame, 0, len(frame), ops)
        return end

    def _body(self, buf: bytes, pos: int, entry: tuple, ops: list) -> int:
        """Emit the frame at pos if its body is in buf, else hold it; return the next pos or -1."""
        frame_len = entry[-1] + entry[-2] + 2
        end = pos + frame_len
        if end > len(buf):
            self._stash_body(buf, pos, entry, frame_len)
            return -1
        if buf[end - 2] != _CR or buf[end - 1] != _LF:
            raise ProtocolError(ERR_UNKNOWN_OP)
        self._emit(entry, buf, pos, end, ops)
        return end

    # -- helpers for _control
    def _locate_arg(self, buf: bytes, pos: int, eol: int, mode: int, i: int) -> tuple[bytes, int]:
        """(argument, index of the LF ending it) for a complete line; enforces max_control_line."""
        a = _arg_start(buf, i, eol + 1, mode)
        end = eol
        if a == eol:
            end = buf.find(b"\n", a + 1)
            if end < 0:
                return b"", _NEED_MORE
        arg = buf[a:end]
        # parser.go drops one trailing byte once it has seen a CR in the argument.
        if arg.find(b"\r", 1) >= 0:
            arg = arg[:-1]
        if len(arg) > self.max_control_line or end - pos > self.max_control_line + _LINE_SLACK:
            raise ProtocolError(ERR_MAX_CONTROL_LINE)
        return arg, end

    def _check_skipped_line(self, pos: int, eol: int) -> None:
        if eol - pos > self.max_control_line + _LINE_SLACK:
            raise ProtocolError(ERR_MAX_CONTROL_LINE)

    def _remember(self, line: bytes, entry: tuple) -> None:
        cache = self._cache
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[line] = entry


# ---------------------------------------------------------------------------------------- client side


class ClientParser(_Parser):
    """Parses what an application sends, judging it as nats-server 2.9 would; `feed_data` never raises."""

    __slots__ = (
        "_run_counts",
        "_run_priorities",
        "_run_requests",
        "_run_start",
        "_scan",
        "_want_headers",
        "batch",
        "echo",
        "headers",
        "max_payload",
        "no_responders",
        "pedantic",
        "protocol",
        "supports_headers",
        "verbose",
    )
    _OPS = _CLIENT_OPS

    def __init__(
        self,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_control_line: int = MAX_CONTROL_LINE,
        scan: ScanPubs | None = scan_pubs,
    ) -> None:
        super().__init__(max_control_line)
        # Scanner for runs of plain PUBs in batch mode (the C one by default, when built); None: Python.
        self._scan = scan
        # The shell updates max_payload (and supports_headers) from the upstream INFO; negative = no limit.
        self.max_payload = max_payload
        self.supports_headers = True
        # The client's effective options as nats-server tracks them: defaults before CONNECT, then each
        # CONNECT overrides only the keys it carries.
        self.verbose = True
        self.pedantic = True
        self.echo = True
        self.headers = False
        self.no_responders = False
        self.protocol = 0
        self._want_headers = False
        self.batch = False
        self._run_start = -1
        self._run_counts = {}
        self._run_requests = {}
        self._run_priorities = {}

    def feed_data(self, data: bytes) -> list[ClientOp]:
        """Parse more bytes; return every op they complete, in order, ending with an Err if one is met."""
        return self._feed(data)

    def _parse(self, buf: bytes, pos: int, ops: list) -> None:
        n = len(buf)
        find = buf.find
        startswith = buf.startswith
        cache_get = self._cache.get
        append = ops.append
        limit = self.max_payload
        if limit < 0:
            limit = 1 << 62
        last_line = self._last_line
        last = self._last
        scan = self._scan if self.batch else None
        max_line = self.max_control_line
        try:
            while pos < n:
                if scan is not None:
                    end = scan(
                        buf,
                        pos,
                        self._run_counts,
                        limit,
                        max_line,
                        self.headers,
                        self._run_requests,
                        self._run_priorities,
                    )
                    if end != pos:
                        if self._run_start < 0:
                            self._run_start = pos
                        pos = end
                        if pos >= n:
                            break
                if not startswith(last_line, pos):
                    eol = find(b"\n", pos)
                    if eol < 0:
                        self._flush_run(buf, pos, ops)
                        self._stash_line(buf, pos)
                        return
                    line = buf[pos : eol + 1]
                    entry = cache_get(line)
                    if entry is None:
                        entry = self._quick(line)
                        if entry is None:
                            pos = self._slow(buf, pos, eol, ops)
                            if pos < 0:
                                return
                            continue
                    last_line = line
                    last = entry
                subject, reply, hdr, size, line_len = last
                if size > limit or (hdr >= 0 and not self.headers):
                    # Let the slow path produce the exact error.
                    pos = self._flush_run(buf, pos, ops)
                    pos = self._control(buf, pos, pos + line_len - 1, ops)
                    continue
                end = pos + line_len + size + 2
                if end > n:
                    self._flush_run(buf, pos, ops)
                    self._stash_body(buf, pos, last, line_len + size + 2)
                    return
                if buf[end - 2] != _CR or buf[end - 1] != _LF:
                    raise ProtocolError(ERR_UNKNOWN_OP)
                code = 0 if hdr <= 0 or not self.batch else _header_priority(buf, pos + line_len, hdr)
                if self.batch and code >= 0:
                    self._join_run(pos, subject, reply is not None, code)
                else:
                    self._flush_run(buf, pos, ops)
                    append(Pub(subject, reply, hdr, buf[pos:end], line_len))
                pos = end
            self._flush_run(buf, pos, ops)
        except ProtocolError:
            self._flush_run(buf, pos, ops)
            raise
        finally:
            self._last_line = last_line
            self._last = last

    def _slow(self, buf: bytes, pos: int, eol: int, ops: list) -> int:
        """_control for a line the fast path does not take; a plain PUB it yields joins the open run, so
        that runs do not depend on which lines were cached (nor on the C scanner, which takes them too)."""
        found: list = []
        try:
            end = self._control(buf, pos, eol, found)
        except ProtocolError:
            self._flush_run(buf, pos, ops)
            ops.extend(found)
            raise
        if self.batch and end > 0 and len(found) == 1:
            op = found[0]
            if type(op) is Pub:
                code = 0 if op.hdr_size <= 0 else _header_priority(op.frame, op.body_start, op.hdr_size)
                if code >= 0:
                    self._join_run(pos, op.subject, op.reply is not None, code)
                    return end
        self._flush_run(buf, pos, ops)
        ops.extend(found)
        return end

    def _join_run(self, pos: int, subject: str, request: bool, code: int) -> None:
        """Count the frame at pos into the open run (opening it): by subject, request, header priority."""
        if self._run_start < 0:
            self._run_start = pos
        counts = self._run_counts
        counts[subject] = counts.get(subject, 0) + 1
        if request:
            requests = self._run_requests
            requests[subject] = requests.get(subject, 0) + 1
        if code:
            key = (subject, code, int(request))
            priorities = self._run_priorities
            priorities[key] = priorities.get(key, 0) + 1

    def _flush_run(self, buf: bytes, pos: int, ops: list) -> int:
        start = self._run_start
        if start >= 0:
            self._run_start = -1
            counts = self._run_counts
            self._run_counts = {}  # always a fresh dict while no run is open
            requests = self._run_requests
            if requests:
                self._run_requests = {}
            else:
                requests = _NO_REQUESTS  # shared, never written: the common run has no request
            priorities = self._run_priorities
            if priorities:
                self._run_priorities = {}
            else:
                priorities = _NO_PRIORITIES
            frames = buf if start == 0 and pos == len(buf) else buf[start:pos]  # a whole read: no copy
            ops.append(PubRun(frames, counts, sum(counts.values()), requests, priorities))
        return pos

    def _quick(self, line: bytes) -> tuple | None:
        """Parse a canonical PUB/HPUB line (single blanks, CRLF, UTF-8), else None for _control."""
        if line[:4] == b"PUB ":
            toks = line[4:-2].split(b" ")
            hdr_tok = None
        elif line[:5] == b"HPUB ":
            toks = line[5:-2].split(b" ")
            if len(toks) < 3:
                return None
            hdr_tok = toks.pop(-2)
        else:
            return None
        # `9 in line` (a tab) is an int membership test: far cheaper than `b"\t" in line`.
        if line[-2] != _CR or 9 in line or b"" in toks or len(line) > self.max_control_line:
            return None
        size_tok = toks[-1]
        size = _NUMBERS.get(size_tok) if len(size_tok) <= 9 else -1
        if size is None:
            size = _parse_size(size_tok)
        if size < 0:
            return None
        hdr = -1
        if hdr_tok is not None:
            hdr = _parse_size(hdr_tok)
            if not 0 <= hdr <= size:
                return None
        try:
            if len(toks) == 2:
                entry = (toks[0].decode(), None, hdr, size, len(line))
                # Only lines without a reply are cached: replies are mostly unique inboxes.
                self._remember(line, entry)
                return entry
            if len(toks) == 3:
                return (toks[0].decode(), toks[1].decode(), hdr, size, len(line))
        except UnicodeDecodeError:
            pass  # _control decodes with surrogateescape
        return None

    def _emit(self, entry: tuple, buf: bytes, pos: int, end: int, ops: list) -> None:
        subject, reply, hdr, _size, line_len = entry
        if subject is not None:
            frame = buf if pos == 0 and end == len(buf) else buf[pos:end]
            ops.append(Pub(subject, reply, hdr, frame, line_len))

    def _control(self, buf: bytes, pos: int, eol: int, ops: list) -> int:
        """Parse the complete control line at buf[pos:eol+1] the slow, exact way; return the next pos."""
        found = _match_op(buf, pos, eol + 1, _CLIENT_OPS)
        assert found is not None  # a line ending in LF cannot be a proper keyword prefix
        kind, mode, i = found
        if mode == _SKIP:
            self._check_skipped_line(pos, eol)
            if kind == _K_PING:
                ops.append(PING)
            elif kind == _K_PONG:
                ops.append(PONG)
            return eol + 1
        arg, end = self._locate_arg(buf, pos, eol, mode, i)
        if end < 0:
            self._stash_line(buf, pos)
            return -1
        if kind == _K_PUB:
            return self._body(buf, pos, self._pub(buf, pos, end, eol, arg), ops)
        if kind == _K_HPUB:
            if not self.headers:
                raise ProtocolError(ERR_SILENT_CLOSE)
            return self._body(buf, pos, self._hpub(buf, pos, end, eol, arg), ops)
        if kind == _K_SUB:
            toks = _split_arg(arg)
            if len(toks) == 2:
                ops.append(Sub(_str(toks[0]), None, _str(toks[1])))
            elif len(toks) == 3:
                ops.append(Sub(_str(toks[0]), _str(toks[1]), _str(toks[2])))
            else:
                raise ProtocolError(ERR_SILENT_CLOSE)
        elif kind == _K_UNSUB:
            toks = _split_arg(arg)
            if len(toks) == 1:
                ops.append(Unsub(_str(toks[0]), None))
            elif len(toks) == 2:
                max_msgs = _parse_size(toks[1])
                ops.append(Unsub(_str(toks[0]), max_msgs if max_msgs > 0 else None))
            else:
                raise ProtocolError(ERR_SILENT_CLOSE)
        elif kind == _K_CONNECT:
            ops.append(self._connect(arg))
        elif kind == _K_INFO:
            _decode_json_object(arg)  # accepted and ignored, as nats-server does for a client
        elif kind == _K_HMSG:
            # nats-server takes a client's HMSG as a zero-length message it drops; only CRLF may follow.
            return self._body(buf, pos, (None, None, 0, 0, end + 1 - pos), ops)
        else:  # -ERR from a client: nats-server logs it and closes.
            raise ProtocolError(ERR_SILENT_CLOSE)
        return end + 1

    def _pub(self, buf: bytes, pos: int, end: int, eol: int, arg: bytes) -> tuple:
        toks = _split_blanks(arg)
        if len(toks) == 2:
            subject, reply, size_tok = toks[0], None, toks[1]
        elif len(toks) == 3:
            subject, reply, size_tok = toks
        else:
            raise ProtocolError(ERR_SILENT_CLOSE)
        size = _parse_size(size_tok)
        if size < 0:
            raise ProtocolError(ERR_SILENT_CLOSE)
        if 0 <= self.max_payload < size:
            raise ProtocolError(ERR_MAX_PAYLOAD)
        entry = (_str(subject), None if reply is None else _str(reply), -1, size, end + 1 - pos)
        # Reply subjects are mostly unique inboxes: caching them would only churn the cache.
        if reply is None and end == eol:
            self._remember(buf[pos : end + 1], entry)
        return entry

    def _hpub(self, buf: bytes, pos: int, end: int, eol: int, arg: bytes) -> tuple:
        toks = _split_blanks(arg)
        if len(toks) == 3:
            subject, reply, hdr_tok, size_tok = toks[0], None, toks[1], toks[2]
        elif len(toks) == 4:
            subject, reply, hdr_tok, size_tok = toks
        else:
            raise ProtocolError(ERR_SILENT_CLOSE)
        hdr = _parse_size(hdr_tok)
        size = _parse_size(size_tok)
        if hdr < 0 or size < 0 or hdr > size:
            raise ProtocolError(ERR_SILENT_CLOSE)
        if 0 <= self.max_payload < size:
            raise ProtocolError(ERR_MAX_PAYLOAD)
        entry = (_str(subject), None if reply is None else _str(reply), hdr, size, end + 1 - pos)
        if reply is None and end == eol:
            self._remember(buf[pos : end + 1], entry)
        return entry

    def _connect(self, arg: bytes) -> Connect:
        options = _decode_json_object(arg)
        for key, value in options.items():
            field = key.lower()
            kind = _CONNECT_FIELDS.get(field)
            if kind is None:
                continue
            if not _go_type_ok(kind, value):
                raise ProtocolError(ERR_SILENT_CLOSE)
            if value is None:
                continue  # encoding/json leaves the field unchanged
            if field in ("verbose", "pedantic", "echo", "no_responders", "protocol"):
                setattr(self, field, value)
            elif field == "headers":
                self._want_headers = value
        self.headers = self.supports_headers and self._want_headers
        if not 0 <= self.protocol <= 1:
            raise ProtocolError(ERR_BAD_CLIENT_PROTOCOL)
        if self.no_responders and not self.headers:
            raise ProtocolError(ERR_NO_RESPONDERS_REQUIRES_HEADERS)
        return Connect(options)


# ---------------------------------------------------------------------------------------- server side


class ServerParser(_Parser):
    """Parses what the upstream nats-server sends; malformed data yields a fatal Err, never an exception."""

    __slots__ = ("_scan", "batch")
    _OPS = _SERVER_OPS

    def __init__(
        self, max_control_line: int = MAX_SERVER_CONTROL_LINE, scan: ScanMsgs | None = scan_msgs
    ) -> None:
        super().__init__(max_control_line)
        # batch: runs of plain MSGs come out as MsgRun ops (only with a scanner: the C one by default).
        self.batch = False
        self._scan = scan

    def feed_data(self, data: bytes) -> list[ServerOp]:
        """Parse more bytes; return every op they complete, in order, ending with an Err if one is met."""
        return self._feed(data)

    def _parse(self, buf: bytes, pos: int, ops: list) -> None:
        n = len(buf)
        find = buf.find
        startswith = buf.startswith
        cache_get = self._cache.get
        append = ops.append
        last_line = self._last_line
        last = self._last
        scan = self._scan if self.batch else None
        max_line = self.max_control_line
        try:
            while pos < n:
                if scan is not None:
                    end = scan(buf, pos, max_line)
                    if end != pos:
                        append(MsgRun(buf if pos == 0 and end == n else buf[pos:end]))
                        pos = end
                        continue
                if not startswith(last_line, pos):
                    eol = find(b"\n", pos)
                    if eol < 0:
                        self._stash_line(buf, pos)
                        return
                    line = buf[pos : eol + 1]
                    entry = cache_get(line)
                    if entry is None:
                        entry = self._quick(line)
                        if entry is None:
                            pos = self._control(buf, pos, eol, ops)
                            if pos < 0:
                                return
                            continue
                    last_line = line
                    last = entry
                subject, sid, reply, hdr, size, line_len = last
                start = pos + line_len
                end = start + size + 2
                if end > n:
                    self._stash_body(buf, pos, last, line_len + size + 2)
                    return
                if buf[end - 2] != _CR or buf[end - 1] != _LF:
                    raise ProtocolError(ERR_UNKNOWN_OP)
                append(Msg(subject, sid, reply, hdr, buf[start : end - 2]))
                pos = end
        finally:
            self._last_line = last_line
            self._last = last

    def _quick(self, line: bytes) -> tuple | None:
        """Parse a canonical MSG/HMSG line (upper case, single blanks, CRLF), else None for _control."""
        if line.startswith(b"MSG "):
            toks = line[4:-2].split(b" ")
            has_headers = False
        elif line.startswith(b"HMSG "):
            toks = line[5:-2].split(b" ")
            has_headers = True
        else:
            return None
        if line[-2] != _CR or 9 in line or len(line) > self.max_control_line or b"" in toks:
            return None
        try:
            entry = self._msg_args(toks, has_headers, len(line))
        except ProtocolError:
            return None
        if entry[2] is None:
            self._remember(line, entry)
        return entry

    def _emit(self, entry: tuple, buf: bytes, pos: int, end: int, ops: list) -> None:
        subject, sid, reply, hdr, _size, line_len = entry
        ops.append(Msg(subject, sid, reply, hdr, buf[pos + line_len : end - 2]))

    def _control(self, buf: bytes, pos: int, eol: int, ops: list) -> int:
        """Parse the complete control line at buf[pos:eol+1]; return the next pos."""
        found = _match_op(buf, pos, eol + 1, _SERVER_OPS)
        assert found is not None  # a line ending in LF cannot be a proper keyword prefix
        kind, mode, i = found
        if mode == _SKIP:
            self._check_skipped_line(pos, eol)
            ops.append(PING if kind == _K_PING else PONG if kind == _K_PONG else OK)
            return eol + 1
        arg, end = self._locate_arg(buf, pos, eol, mode, i)
        if end < 0:
            self._stash_line(buf, pos)
            return -1
        if kind == _K_INFO:
            try:
                ops.append(Info(_decode_json_object(arg)))
            except ProtocolError as err:
                raise ProtocolError(ERR_PARSER) from err
            return end + 1
        if kind == _K_ERR:
            text = _str(arg.strip())
            if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
                text = text[1:-1]
            ops.append(Err(text, _server_err_is_fatal(text)))
            return end + 1
        entry = self._msg_args(_split_blanks(arg), kind == _K_HMSG, end + 1 - pos)
        if entry[2] is None and end == eol:
            self._remember(buf[pos : end + 1], entry)
        return self._body(buf, pos, entry, ops)

    @staticmethod
    def _msg_args(toks: list[bytes], has_headers: bool, line_len: int) -> tuple:
        want = 4 if has_headers else 3
        if len(toks) == want:
            reply = None
        elif len(toks) == want + 1:
            reply = toks[2]
            del toks[2]
        else:
            raise ProtocolError(ERR_PARSER)
        sid = _parse_uint(toks[1])
        size = _parse_uint(toks[-1])
        hdr = _parse_uint(toks[2]) if has_headers else -1
        if sid < 0 or size < 0 or (has_headers and not 0 <= hdr <= size):
            raise ProtocolError(ERR_PARSER)
        return (toks[0], sid, reply, hdr, size, line_len)


# Texts nats-server 2.9 sends without closing the connection.
_NON_FATAL_SERVER_ERRS = (
    ERR_INVALID_SUBJECT.lower(),
    ERR_INVALID_PUBLISH_SUBJECT.lower(),
    ERR_MAX_SUBSCRIPTIONS,
    "permissions violation",
)


def _server_err_is_fatal(text: str) -> bool:
    return not text.lower().startswith(_NON_FATAL_SERVER_ERRS)


# ---------------------------------------------------------------------------------------------- subjects


def is_valid_subject(subject: str) -> bool:
    """Whether nats-server 2.9 accepts this SUB subject: no empty token, `>` only last, no space or tab."""
    if not subject or " " in subject or "\t" in subject:
        return False
    tokens = subject.split(".")
    for token in tokens[:-1]:
        if not token or token == ">":
            return False
    return bool(tokens[-1])


def is_valid_publish_subject(subject: str) -> bool:
    """Whether a pedantic nats-server 2.9 accepts this PUB subject: no empty, `*` or `>` token, no blank."""
    if not subject or " " in subject or "\t" in subject:
        return False
    return all(token and token != "*" and token != ">" for token in subject.split("."))


# --------------------------------------------------------------------------------------------- encoders

# Go's encoding/json escapes these inside strings; nats-server's INFO therefore never carries them raw.
_GO_JSON_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def _go_json(options: dict) -> bytes:
    out = msgspec.json.encode(options)
    for raw, escaped in _GO_JSON_ESCAPES:
        if raw in out:
            out = out.replace(raw, escaped)
    return out


def encode_info(options: dict) -> bytes:
    """INFO as nats-server writes it: compact JSON and a blank before CRLF."""
    return b"INFO %s \r\n" % _go_json(options)


def encode_connect(options: dict) -> bytes:
    """CONNECT with compact JSON options."""
    return b"CONNECT %s\r\n" % msgspec.json.encode(options)


def next_msg(frames: bytes, pos: int) -> tuple[Msg, int]:
    """The frame of a MsgRun at pos as a Msg, and where the next frame starts."""
    eol = frames.index(b"\n", pos)
    toks = frames[pos + 4 : eol - 1].split(b" ")
    start = eol + 1
    end = start + int(toks[-1])
    reply = toks[2] if len(toks) == 4 else None
    return Msg(toks[0], int(toks[1]), reply, -1, frames[start:end]), end + 2


def split_pub(frame: bytes) -> tuple[bytes, bytes | None, int, bytes]:
    """(subject, reply, hdr_size (-1 for PUB), body) of a well-formed PUB/HPUB frame (one the parser
    accepted or encode_pub built); the body is the header block then the payload, without the CRLF."""
    eol = frame.index(b"\r\n")
    args = frame[:eol].split()
    headers = args[0][:1] in (b"H", b"h")
    reply = args[2] if len(args) == (5 if headers else 4) else None
    return args[1], reply, int(args[-2]) if headers else -1, frame[eol + 2 : -2]


def encode_pub(subject: str, reply: str | None, payload: bytes, headers: bytes | None = None) -> bytes:
    """PUB, or HPUB when headers (a full header block) is given."""
    subj = _bytes(subject)
    if headers is None:
        if reply is None:
            return b"PUB %s %d\r\n%s\r\n" % (subj, len(payload), payload)
        return b"PUB %s %s %d\r\n%s\r\n" % (subj, _bytes(reply), len(payload), payload)
    hdr = len(headers)
    total = hdr + len(payload)
    if reply is None:
        return b"HPUB %s %d %d\r\n%s%s\r\n" % (subj, hdr, total, headers, payload)
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subj, _bytes(reply), hdr, total, headers, payload)


def _sid_bytes(sid: int | str) -> bytes:
    return b"%d" % sid if isinstance(sid, int) else _bytes(sid)


def encode_sub(subject: str, queue: str | None, sid: int | str) -> bytes:
    """SUB, with a queue group when queue is given."""
    if queue is None:
        return b"SUB %s %s\r\n" % (_bytes(subject), _sid_bytes(sid))
    return b"SUB %s %s %s\r\n" % (_bytes(subject), _bytes(queue), _sid_bytes(sid))


def encode_unsub(sid: int | str, max_msgs: int | None = None) -> bytes:
    """UNSUB, optionally after max_msgs more messages."""
    if max_msgs is None:
        return b"UNSUB %s\r\n" % _sid_bytes(sid)
    return b"UNSUB %s %d\r\n" % (_sid_bytes(sid), max_msgs)


def encode_msg(subject: bytes, sid: bytes, reply: bytes | None, hdr_size: int, body: bytes) -> bytes:
    """MSG (hdr_size < 0) or HMSG to an application; body is headers + payload."""
    if hdr_size < 0:
        if reply is None:
            return b"MSG %s %s %d\r\n%s\r\n" % (subject, sid, len(body), body)
        return b"MSG %s %s %s %d\r\n%s\r\n" % (subject, sid, reply, len(body), body)
    if reply is None:
        return b"HMSG %s %s %d %d\r\n%s\r\n" % (subject, sid, hdr_size, len(body), body)
    return b"HMSG %s %s %s %d %d\r\n%s\r\n" % (subject, sid, reply, hdr_size, len(body), body)


def encode_err(text: str) -> bytes:
    """-ERR '<text>'; b"" for the empty text, which stands for nats-server's silent close."""
    if not text:
        return b""
    return b"-ERR '%s'\r\n" % _bytes(text)


# ---------------------------------------------------------------------------------------------- headers


def status_message_headers(code: int, description: str = "") -> bytes:
    """A status-only header block, e.g. b"NATS/1.0 503\\r\\n\\r\\n" as nats-server sends for no responders."""
    if description:
        return b"NATS/1.0 %d %s\r\n\r\n" % (code, _bytes(description))
    return b"NATS/1.0 %d\r\n\r\n" % code


def header_value(headers: bytes, name: str) -> str | None:
    """The first value of header `name` (case-insensitive) in a NATS header block, stripped; else None."""
    key = b"\r\n" + _bytes(name).lower() + b":"
    at = headers.lower().find(key)
    if at < 0:
        return None
    start = at + len(key)
    stop = headers.find(b"\r\n", start)
    if stop < 0:
        stop = len(headers)
    return _str(headers[start:stop].strip(b" \t"))


_BAD_HEADER_NAME = re.compile("[:\r\n \t]")


def add_header(headers: bytes | None, name: str, value: str) -> bytes:
    """Return the header block with `name: value` appended, creating b"NATS/1.0\\r\\n...\\r\\n" if None."""
    if not name or _BAD_HEADER_NAME.search(name) or "\r" in value or "\n" in value:
        raise ValueError(f"invalid NATS header {name!r}: {value!r}")
    line = b"%s: %s\r\n\r\n" % (_bytes(name), _bytes(value))
    if not headers:
        return b"NATS/1.0\r\n" + line
    if not headers.endswith(b"\r\n\r\n"):
        raise ValueError("malformed NATS header block: it must end with an empty line")
    return headers[:-2] + line
