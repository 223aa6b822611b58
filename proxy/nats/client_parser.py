"""The server side of an application connection: `ClientParser`, nats-server 2.9's client parser
(`server/parser.go`, `server/client.go`): the same ops, `-ERR` texts and verdicts on what closes the
connection. Runs of plain PUBs go to the C scanner when it is built (`scan_pubs`).
"""

from __future__ import annotations

from proxy.errors import ProtocolError
from proxy.nats.ops import (
    _NO_REQUESTS,
    DEFAULT_MAX_PAYLOAD,
    ERR_BAD_CLIENT_PROTOCOL,
    ERR_MAX_PAYLOAD,
    ERR_NO_RESPONDERS_REQUIRES_HEADERS,
    ERR_SILENT_CLOSE,
    ERR_UNKNOWN_OP,
    MAX_CONTROL_LINE,
    PING,
    PONG,
    ClientOp,
    Connect,
    Pub,
    PubRun,
    Sub,
    Unsub,
)
from proxy.nats.parser import (
    _CLIENT_OPS,
    _CONNECT_FIELDS,
    _CR,
    _K_CONNECT,
    _K_HMSG,
    _K_HPUB,
    _K_INFO,
    _K_PING,
    _K_PONG,
    _K_PUB,
    _K_SUB,
    _K_UNSUB,
    _LF,
    _NUMBERS,
    _SKIP,
    _decode_json_object,
    _go_type_ok,
    _match_op,
    _mentions_priority,
    _parse_size,
    _Parser,
    _split_arg,
    _split_blanks,
    _str,
)
from proxy.nats.speedups import ScanPubs, scan_pubs

# ---------------------------------------------------------------------------------------- client side


class ClientParser(_Parser):
    """Parses what an application sends, judging it as nats-server 2.9 would; `feed_data` never raises."""

    __slots__ = (
        "_run_counts",
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
                    end = scan(buf, pos, self._run_counts, limit, max_line, self.headers, self._run_requests)
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
                if self.batch and (hdr < 0 or not _mentions_priority(buf, pos + line_len, hdr)):
                    if self._run_start < 0:
                        self._run_start = pos
                    counts = self._run_counts
                    counts[subject] = counts.get(subject, 0) + 1
                    if reply is not None:
                        requests = self._run_requests
                        requests[subject] = requests.get(subject, 0) + 1
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
            if type(op) is Pub and (
                op.hdr_size < 0 or not _mentions_priority(op.frame, op.body_start, op.hdr_size)
            ):
                if self._run_start < 0:
                    self._run_start = pos
                counts = self._run_counts
                counts[op.subject] = counts.get(op.subject, 0) + 1
                if op.reply is not None:
                    requests = self._run_requests
                    requests[op.subject] = requests.get(op.subject, 0) + 1
                return end
        self._flush_run(buf, pos, ops)
        ops.extend(found)
        return end

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
            frames = buf if start == 0 and pos == len(buf) else buf[start:pos]  # a whole read: no copy
            ops.append(PubRun(frames, counts, sum(counts.values()), requests))
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
