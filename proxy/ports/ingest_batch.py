"""HTTP ingest's fast path for `POST /publish`: a batch decoded in one call, classified once per subject,
decided by the engine in one call and written upstream in one slice.

A batch takes this path when every item is a plain message (a subject checked once per distinct
subject, `data` text, no headers, no reply, no base64, a priority or none) that is not critical and no
`batchMode: envelope` rule covers, and when the engine would have forwarded each of them at once
(`Engine.forward_batch`: level none, nothing queued, tokens for all). Otherwise, or for any item the typed
decoding refuses, `post_publish_batch` takes the batch message by message as before, so the answers
(results, errors, statuses) are the same either way; the tests compare both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from policies.config import BatchMode, Priority
from policies.roles import DATA, subject_role
from proxy.nats import speedups
from proxy.nats.protocol import add_header
from proxy.upstream.journal import RunEntry

if TYPE_CHECKING:
    from proxy.ports.http_ingest import BatchItem
    from proxy.sidecar import Sidecar

CRITICAL: Final = Priority.CRITICAL
ENVELOPE: Final = BatchMode.ENVELOPE
MAX_SUBJECT_BYTES: Final = 1024
# A literal publish subject: tokens of bytes above 0x20 but DEL and ".", none of them exactly "*" or ">"
# (is_valid_publish_subject), and no control character anywhere: one regular expression, no loop in Python.
_PUBLISH_SUBJECT: Final = re.compile(
    r"(?![*>](?:\.|\Z))[^\x00-\x20\x7f.]+(?:\.(?![*>](?:\.|\Z))[^\x00-\x20\x7f.]+)*\Z"
)
# Subjects found valid, so that a batch's repeated subjects are checked once (bounded: cleared when full).
SUBJECT_CACHE_SIZE: Final = 4096
_valid_subjects: dict[str, bool] = {}
# KPI-Priority header blocks by priority, built once.
_PRIORITY_BLOCKS: Final = {
    p: add_header(None, "KPI-Priority", p) for p in ("low", "medium", "high", "critical")
}


def subject_ok(value: str) -> bool:
    """Whether `value` is a literal NATS subject to publish to, at most MAX_SUBJECT_BYTES in UTF-8."""
    known = _valid_subjects.get(value)
    if known is not None:
        return known
    ok = _PUBLISH_SUBJECT.match(value) is not None and (
        len(value) * 4 <= MAX_SUBJECT_BYTES
        or len(value.encode("utf-8", "surrogateescape")) <= MAX_SUBJECT_BYTES
    )
    if len(_valid_subjects) >= SUBJECT_CACHE_SIZE:
        _valid_subjects.clear()
    _valid_subjects[value] = ok
    return ok


def decode_items(raw: bytes, item_type: type[BatchItem]) -> list[BatchItem] | None:
    """A JSON array or NDJSON body decoded to items in one call, or None (let the per-item path decode it
    and report each line's error as it does)."""
    text = raw.strip()
    if not text:
        return None
    decoder = _decoder(item_type)
    if text[:1] == b"[":
        try:
            return decoder.decode(text)
        except msgspec.DecodeError:
            return None
    # NDJSON as one JSON array: each non-blank line one object. A line must hold exactly one object, as
    # the per-item path reads it: it starts with "{" and ends with "}", and the array has one item per
    # line (an object cut over two lines would otherwise be read whole; BatchItem has no field an object
    # could continue in).
    joined = ndjson_array(text)
    if joined is None:
        return None
    array, count = joined
    try:
        items = decoder.decode(array)
    except msgspec.DecodeError:
        return None
    return items if len(items) == count else None


def ndjson_array_py(text: bytes) -> tuple[bytes, int] | None:
    """The non-blank lines of `text`, stripped, as one JSON array, and their number; None when a line
    does not start with "{" and end with "}". The reference of the C `ndjson_array`."""
    lines = [line.strip() for line in text.split(b"\n")]
    lines = [line for line in lines if line]
    if not all(line[:1] == b"{" and line[-1:] == b"}" for line in lines):
        return None
    return b"[" + b",".join(lines) + b"]", len(lines)


ndjson_array: Callable[[bytes], tuple[bytes, int] | None] = speedups.ndjson_array or ndjson_array_py


_decoders: dict[type, msgspec.json.Decoder] = {}


def _decoder(item_type: type) -> msgspec.json.Decoder:
    decoder = _decoders.get(item_type)
    if decoder is None:
        decoder = _decoders[item_type] = msgspec.json.Decoder(list[item_type])  # type: ignore[valid-type]
    return decoder


Group = tuple[str, Priority]
# What every item of one (subject, priority field) shares: its group, header block, wire subject and
# the start of its answer (`_describe`).
Described = tuple[Group, bytes | None, bytes, bytes]
Describe = Callable[[str, "str | None"], "Described | None"]


def frame_items_py(
    items: list[BatchItem], describe: Describe, max_payload: int
) -> tuple[bytes, bytes, dict[Group, int]] | None:
    """The frames of a batch of plain items (PUBs, or HPUBs with a KPI-Priority block), their answers
    (a JSON array, as the per-item path would write it for forwarded messages) and their number per
    group; None when an item needs the per-item path (a reply, headers, dataBase64, a message over
    max_payload, or a subject `describe` refuses). The reference of the C `frame_items`."""
    frames: list[bytes] = []
    answers: list[bytes] = []
    groups: dict[Group, int] = {}
    seen: dict[tuple[str, str | None], Described] = {}
    last_key: tuple[str, str | None] | None = None
    known: Any = None
    for index, item in enumerate(items):
        if item.reply is not None or item.headers is not None or item.data_base64 is not None:
            return None
        key = (item.subject, item.priority)
        if key != last_key:
            known = seen.get(key)
            if known is None:
                known = describe(item.subject, item.priority)
                if known is None:
                    return None
                seen[key] = known
            last_key = key
        group, block, subj, head = known
        try:
            payload = item.data.encode("utf-8") if item.data else b""
        except UnicodeEncodeError:  # a lone surrogate (not from JSON): the per-item path encodes it
            return None
        size = len(payload)
        if block is None:
            frames.append(b"PUB %s %d\r\n%s\r\n" % (subj, size, payload))
        else:
            hdr = len(block)
            size += hdr
            frames.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subj, hdr, size, block, payload))
        if size > max_payload:
            return None
        groups[group] = groups.get(group, 0) + 1
        answers.append(
            b'{"index":%d,"status":202,%s,"size":%d,"reason":null,"result":"forwarded"}' % (index, head, size)
        )
    return b"".join(frames), b"[" + b",".join(answers) + b"]", groups


frame_items: Callable[[list[BatchItem], Describe, int], tuple[bytes, bytes, dict[Group, int]] | None] = (
    speedups.frame_items or frame_items_py
)


def publish_plain(sidecar: Sidecar, items: list[BatchItem], now: float) -> msgspec.Raw | None:
    """Forward a batch of plain, non-critical messages in one engine call and one write; their results
    (already encoded: a JSON array, as the per-item path would answer), or None (nothing done) when the
    batch needs the per-message path."""
    engine = sidecar.engine
    classify = engine.classify
    framed = frame_items(
        items, lambda subject, priority: _describe(classify, subject, priority), sidecar.max_payload
    )
    if framed is None:
        return None
    data, answers, groups = framed
    counts: dict[str, int] = {}
    for (subject, _), k in groups.items():
        counts[subject] = counts.get(subject, 0) + k
    upstream = sidecar.upstream
    batch = [(subject, k, priority, DATA) for (subject, priority), k in groups.items()]
    if not engine.forward_batch(
        batch, len(items), now, upstream.can_stream and not sidecar.flow.upstream_stalled
    ):
        return None
    upstream.write(data)
    upstream.track(RunEntry(None, data, counts), len(data))
    return msgspec.Raw(answers)


def _describe(classify: Any, subject: str, priority: str | None) -> Described | None:
    """What every item of one (subject, priority) shares, or None when such an item needs the per-item
    path (an invalid subject, a reply or control subject, critical, an envelope rule)."""
    if not subject_ok(subject) or subject_role(subject) is not None:
        return None
    level, rule = classify(subject, priority)
    if level is CRITICAL or (rule is not None and rule.batch_mode is ENVELOPE):
        return None
    block = _PRIORITY_BLOCKS[priority] if priority is not None else None
    head = b'"subject":%s,"priority":%s' % (msgspec.json.encode(subject), msgspec.json.encode(level.label))
    return (subject, level), block, subject.encode("utf-8", "surrogateescape"), head
