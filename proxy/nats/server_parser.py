"""The client side of the sidecar's upstream connection: `ServerParser` (INFO, MSG/HMSG, PING/PONG, +OK,
-ERR); runs of plain MSG frames become one `MsgRun` (`scan_msgs`) in batch mode.
"""

from __future__ import annotations

from proxy.errors import ProtocolError
from proxy.nats.ops import (
    ERR_INVALID_PUBLISH_SUBJECT,
    ERR_INVALID_SUBJECT,
    ERR_MAX_SUBSCRIPTIONS,
    ERR_PARSER,
    ERR_UNKNOWN_OP,
    MAX_SERVER_CONTROL_LINE,
    OK,
    PING,
    PONG,
    Err,
    Info,
    Msg,
    MsgRun,
    ServerOp,
)
from proxy.nats.parser import (
    _CR,
    _K_ERR,
    _K_HMSG,
    _K_INFO,
    _K_PING,
    _K_PONG,
    _LF,
    _SERVER_OPS,
    _SKIP,
    _decode_json_object,
    _match_op,
    _parse_uint,
    _Parser,
    _split_blanks,
    _str,
)
from proxy.nats.speedups import ScanMsgs, scan_msgs

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
