"""Bytes out: subject checks, encoders of each op nats-server and clients expect, and header helpers."""

from __future__ import annotations

import msgspec

from proxy.nats.ops import Msg
from proxy.nats.parser import _bytes, _str

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


def add_header(headers: bytes | None, name: str, value: str) -> bytes:
    """Return the header block with `name: value` appended, creating b"NATS/1.0\\r\\n...\\r\\n" if None."""
    if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
        raise ValueError(f"invalid NATS header {name!r}: {value!r}")
    line = b"%s: %s\r\n\r\n" % (_bytes(name), _bytes(value))
    if not headers:
        return b"NATS/1.0\r\n" + line
    if not headers.endswith(b"\r\n\r\n"):
        raise ValueError("malformed NATS header block: it must end with an empty line")
    return headers[:-2] + line
