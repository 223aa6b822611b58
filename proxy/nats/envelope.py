"""The `batchMode: envelope` format: several messages of one subject packed into one NATS message.

An envelope is a NATS message on the messages' own subject with the headers

    NATS/1.0
    KPI-Batch-Count: <n>
    KPI-Batch-Format: kpi-envelope/1

and a payload of `n` records, each

    uint32 big-endian  header length (0 when the message had no headers)
    bytes              the message's NATS header block (`NATS/1.0\\r\\n...\\r\\n\\r\\n`), as published
    uint32 big-endian  payload length
    bytes              the payload

Consumers call `unpack(payload)` (or reimplement these eight lines in their language). Only messages
without a reply subject are enveloped; requests and critical messages always travel on their own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from proxy.nats.protocol import split_pub

FORMAT = "kpi-envelope/1"
COUNT_HEADER = "KPI-Batch-Count"
FORMAT_HEADER = "KPI-Batch-Format"
_LEN = struct.Struct(">I")
RECORD_OVERHEAD = 2 * _LEN.size


class EnvelopeError(ValueError):
    """A payload that is not a well-formed kpi-envelope/1."""


def pack(messages: Iterable[tuple[bytes | None, bytes]]) -> bytes:
    """Pack (headers, payload) pairs into an envelope payload."""
    out = bytearray()
    for headers, payload in messages:
        head = headers or b""
        out += _LEN.pack(len(head))
        out += head
        out += _LEN.pack(len(payload))
        out += payload
    return bytes(out)


def unpack(payload: bytes) -> list[tuple[bytes | None, bytes]]:
    """The (headers or None, payload) pairs of an envelope payload, in publish order."""
    records: list[tuple[bytes | None, bytes]] = []
    pos = 0
    end = len(payload)
    view = memoryview(payload)
    while pos < end:
        if end - pos < RECORD_OVERHEAD:
            raise EnvelopeError(f"truncated record at byte {pos}")
        (head_len,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        if pos + head_len + _LEN.size > end:
            raise EnvelopeError(f"header length {head_len} overruns the payload at byte {pos}")
        head = bytes(view[pos : pos + head_len]) if head_len else None
        pos += head_len
        (body_len,) = _LEN.unpack_from(view, pos)
        pos += _LEN.size
        if pos + body_len > end:
            raise EnvelopeError(f"payload length {body_len} overruns the payload at byte {pos}")
        records.append((head, bytes(view[pos : pos + body_len])))
        pos += body_len
    return records


def envelope_headers(count: int) -> bytes:
    """The header block of an envelope of `count` messages."""
    return f"NATS/1.0\r\n{COUNT_HEADER}: {count}\r\n{FORMAT_HEADER}: {FORMAT}\r\n\r\n".encode()


def record_of(frame: bytes) -> tuple[bytes | None, bytes]:
    """The (headers, payload) record of a PUB or HPUB frame as the sidecar forwards it."""
    _, _, hdr_size, body = split_pub(frame)
    if hdr_size < 0:
        return None, body
    return body[:hdr_size], body[hdr_size:]
