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
from typing import TYPE_CHECKING, Any, Final

import msgspec

from policies.config import BatchMode, Priority
from policies.roles import DATA, subject_role
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
    lines = [line.strip() for line in text.split(b"\n")]
    lines = [line for line in lines if line]
    if not all(line[:1] == b"{" and line[-1:] == b"}" for line in lines):
        return None
    try:
        items = decoder.decode(b"[" + b",".join(lines) + b"]")
    except msgspec.DecodeError:
        return None
    return items if len(items) == len(lines) else None


_decoders: dict[type, msgspec.json.Decoder] = {}


def _decoder(item_type: type) -> msgspec.json.Decoder:
    decoder = _decoders.get(item_type)
    if decoder is None:
        decoder = _decoders[item_type] = msgspec.json.Decoder(list[item_type])  # type: ignore[valid-type]
    return decoder


def publish_plain(sidecar: Sidecar, items: list[BatchItem], now: float) -> msgspec.Raw | None:
    """Forward a batch of plain, non-critical messages in one engine call and one write; their results
    (already encoded: a JSON array, as the per-item path would answer), or None (nothing done) when the
    batch needs the per-message path."""
    engine = sidecar.engine
    classify = engine.classify
    max_payload = sidecar.max_payload
    frames: list[bytes] = []
    answers: list[bytes] = []
    groups: dict[tuple[str, Priority], int] = {}
    counts: dict[str, int] = {}
    # Per (subject, priority field): the group, the header block, the wire subject, the answer's start.
    seen: dict[tuple[str, str | None], tuple[tuple[str, Priority], bytes | None, bytes, bytes]] = {}
    # Per (answer start, size): the encoded rest of the answer.
    tails: dict[tuple[bytes, int], bytes] = {}
    last_key: tuple[str, str | None] | None = None
    known: Any = None
    for index, item in enumerate(items):
        if item.reply is not None or item.headers is not None or item.data_base64 is not None:
            return None
        key = (item.subject, item.priority)
        if key != last_key:
            known = seen.get(key)
            if known is None:
                known = _describe(classify, item.subject, item.priority)
                if known is None:
                    return None
                seen[key] = known
            last_key = key
        group, block, subj, head = known
        payload = item.data.encode("utf-8", "surrogateescape") if item.data else b""
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
        subject = group[0]
        counts[subject] = counts.get(subject, 0) + 1
        tail = tails.get((head, size))
        if tail is None:
            tail = tails[(head, size)] = head + b',"size":%d,"reason":null,"result":"forwarded"}' % size
        answers.append(b'{"index":%d,"status":202,%s' % (index, tail))
    upstream = sidecar.upstream
    batch = [(subject, k, priority, DATA) for (subject, priority), k in groups.items()]
    if not engine.forward_batch(
        batch, len(items), now, upstream.can_stream and not sidecar.flow.upstream_stalled
    ):
        return None
    data = b"".join(frames)
    upstream.write(data)
    upstream.track(RunEntry(None, data, counts), len(data))
    return msgspec.Raw(b"[" + b",".join(answers) + b"]")


def _describe(
    classify: Any, subject: str, priority: str | None
) -> tuple[tuple[str, Priority], bytes | None, bytes, bytes] | None:
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
