"""JetStream KV on the wire, sans-I/O: subjects, API request bodies, and parsers of what comes back.

A KV bucket `B` is the stream `KV_B` capturing `$KV.B.>`, one message kept per subject (history 1); a put
is a publish to `$KV.B.<key>` (the PubAck comes on its reply subject); a delete is a publish with the
header `KV-Operation: DEL`. This is what nats.go, nats.js and nats-py do (ADR-8 of nats-architecture-and-
design); the sidecar speaks it with its own codec on its shared upstream connection.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.nats.protocol import Msg, header_value

NANOS = 1_000_000_000
# JetStream API error code of "stream not found" (then the bucket is created).
STREAM_NOT_FOUND = 10059
DELETE_HEADERS = b"NATS/1.0\r\nKV-Operation: DEL\r\n\r\n"


def stream_name(bucket: str) -> str:
    return f"KV_{bucket}"


def key_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def stream_info_subject(bucket: str) -> str:
    return f"$JS.API.STREAM.INFO.{stream_name(bucket)}"


def stream_create_subject(bucket: str) -> str:
    return f"$JS.API.STREAM.CREATE.{stream_name(bucket)}"


def consumer_create_subject(bucket: str) -> str:
    return f"$JS.API.CONSUMER.CREATE.{stream_name(bucket)}"


def consumer_delete_subject(bucket: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.DELETE.{stream_name(bucket)}.{consumer}"


def bucket_config(bucket: str, ttl_s: float) -> bytes:
    """The STREAM.CREATE body of a KV bucket as `nats kv add --history 1 --ttl <ttl>` makes it (in
    memory: the records are a few seconds' state, rewritten every intervalS)."""
    ttl_ns = int(ttl_s * NANOS)
    config = {
        "name": stream_name(bucket),
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs_per_subject": 1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": ttl_ns,
        "max_msg_size": -1,
        "storage": "memory",
        "discard": "new",
        "num_replicas": 1,
        "duplicate_window": min(ttl_ns, 120 * NANOS),
        "deny_delete": True,
        "deny_purge": False,
        "allow_rollup_hdrs": True,
        "allow_direct": True,
    }
    return msgspec.json.encode(config)


def snapshot_consumer(bucket: str, filter_subject: str, deliver_subject: str) -> bytes:
    """An ephemeral push consumer that delivers the last record of each key once (then deleted)."""
    body = {
        "stream_name": stream_name(bucket),
        "config": {
            "deliver_subject": deliver_subject,
            "deliver_policy": "last_per_subject",
            "filter_subject": filter_subject,
            "ack_policy": "none",
            "replay_policy": "instant",
            "inactive_threshold": 10 * NANOS,
            "num_replicas": 1,
            "mem_storage": True,
        },
    }
    return msgspec.json.encode(body)


def status_of(msg: Msg) -> int | None:
    """The status code of a status message (`NATS/1.0 503`), None for a message with data."""
    headers = msg.headers
    if not headers or msg.payload:
        return None
    line = headers.split(b"\r\n", 1)[0]
    parts = line.split()
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return None


def api_reply(msg: Msg) -> tuple[dict[str, Any] | None, str | None]:
    """A JetStream API answer or PubAck: (the JSON object, None) or (None, why it failed in words)."""
    status = status_of(msg)
    if status == 503:
        return None, "no responders: JetStream is not enabled for this account or server"
    if status is not None:
        return None, f"status {status}"
    try:
        data = msgspec.json.decode(msg.payload)
    except msgspec.DecodeError:
        return None, "an answer that is not JSON"
    if not isinstance(data, dict):
        return None, "an answer that is not a JSON object"
    error = data.get("error")
    if isinstance(error, dict):
        return data, f"{error.get('description', 'error')} (code {error.get('err_code', '?')})"
    return data, None


def error_code(data: dict[str, Any] | None) -> int | None:
    if data is None or not isinstance(data.get("error"), dict):
        return None
    code = data["error"].get("err_code")
    return code if isinstance(code, int) else None


def is_delete(msg: Msg) -> bool:
    """A KV delete or purge marker (the key's member left)."""
    headers = msg.headers
    if not headers:
        return False
    operation = header_value(headers, "KV-Operation")
    return operation is not None and operation.upper() in ("DEL", "PURGE")


class Delivery(msgspec.Struct, frozen=True):
    """What the `$JS.ACK` reply subject of a pushed message says about it."""

    consumer: str
    age: float  # seconds since JetStream stored it
    pending: int  # messages the consumer still has to deliver after this one


def delivery_of(reply: bytes | None, wall_now: float) -> Delivery | None:
    """Parse `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>` (and the 12-token form
    of newer servers, with domain and account hash first and a random token last); None if it is not one."""
    if not reply or not reply.startswith(b"$JS.ACK."):
        return None
    tokens = reply.split(b".")
    if len(tokens) == 9:
        consumer, stamp, pending = tokens[3], tokens[7], tokens[8]
    elif len(tokens) >= 12:
        consumer, stamp, pending = tokens[5], tokens[9], tokens[10]
    else:
        return None
    if not stamp.isdigit() or not pending.isdigit():
        return None
    age = max(0.0, wall_now - int(stamp) / NANOS)
    return Delivery(consumer.decode("utf-8", "replace"), age, int(pending))
