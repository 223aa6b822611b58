"""What both parsers share: op keywords, argument splitting, CONNECT checks and the `_Parser` machinery
(scan with `find(b"\\n", pos)`, keep only the unparsed tail, copy only what straddles two reads).
"""

from __future__ import annotations

import re

import msgspec

from proxy.errors import ProtocolError
from proxy.nats.ops import ERR_MAX_CONTROL_LINE, ERR_SILENT_CLOSE, ERR_UNKNOWN_OP, Err

_CR = 13
_LF = 10
# Blanks and garbage around the arguments do not count against max_control_line in nats-server; this
# bounds how much of them is buffered.
_LINE_SLACK = 1024
_CACHE_MAX = 4096
_NEED_MORE = -1
_SKIP_ARGS = -2


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


def _mentions_priority(buf: bytes, start: int, hdr_size: int) -> bool:
    """Whether a header block mentions KPI-Priority (any case): such a message is classified by its
    header, so it never joins a PubRun. The C scanner applies the same test."""
    return b"kpi-priority" in buf[start : start + hdr_size].lower()


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
