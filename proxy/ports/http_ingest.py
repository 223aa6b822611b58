"""The HTTP ingest port: applications that do not speak NATS publish with POST /publish/{subject}.

A message goes through the same path as a NATS publish (`Publisher.publish_message`): classification by
its KPI-Priority header or the `policies:` rules, then the engine's decision, which the answer reports.
Request headers become NATS headers except the HTTP-only ones (FORWARD_EXCLUDED); see docs/api.md.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from policies.config import OnRefuse, PolicyRule
from policies.engine import Decision, Verdict
from proxy.admin.http import ApiError, envelope, error_middleware
from proxy.nats.protocol import add_header
from proxy.ports import ingest_batch
from proxy.sidecar import Sidecar

SIDECAR_KEY: Final = web.AppKey("ingest_sidecar", Sidecar)

# A PUB control line must stay under nats-server's 4096 bytes: bound subject and reply.
MAX_SUBJECT_BYTES: Final = ingest_batch.MAX_SUBJECT_BYTES
MAX_RETRY_AFTER_S: Final = 60
# Request headers that describe the HTTP exchange, not the message: never forwarded as NATS headers.
FORWARD_EXCLUDED: Final = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "user-agent",
        "accept",
        "authorization",
        "cookie",
        "origin",
        "referer",
        "cache-control",
        "pragma",
        "via",
        "forwarded",
        "priority",
        "date",
        "dnt",
        "range",
        "x-real-ip",
    }
)
FORWARD_EXCLUDED_PREFIXES: Final = ("accept-", "proxy-", "sec-", "x-forwarded-", "if-")
PRIORITIES: Final = ("low", "medium", "high", "critical")
# HTTP header names are case-insensitive (HTTP/2 sends them in lower case) but NATS ones are not:
# nats-server and the clients look these up with their exact spelling, so it is restored.
CANONICAL_NAMES: Final = {
    name.lower(): name
    for name in (
        "KPI-Priority",
        "Nats-Msg-Id",
        "Nats-Expected-Stream",
        "Nats-Expected-Last-Msg-Id",
        "Nats-Expected-Last-Sequence",
        "Nats-Expected-Last-Subject-Sequence",
        "Nats-Rollup",
        "Nats-TTL",
    )
}


def canonical_name(name: str) -> str:
    """The NATS spelling of a header name: known names as NATS spells them, other Nats-* title-cased."""
    lower = name.lower()
    known = CANONICAL_NAMES.get(lower)
    if known is not None:
        return known
    if lower.startswith("nats-"):
        return "-".join(part.capitalize() for part in lower.split("-"))
    return name


class BatchItem(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel", kw_only=True, gc=False
):
    """One message of POST /publish. Untracked by the garbage collector (gc=False): it holds strings,
    and dicts and lists of strings, so it can be in no reference cycle, and a batch of 1,000 would
    otherwise trigger a collection."""

    subject: str
    data: str | None = None
    data_base64: str | None = None
    headers: dict[str, str | list[str]] | None = None
    priority: Literal["low", "medium", "high", "critical"] | None = None
    reply: str | None = None


class Refused(Exception):
    """One message cannot be published as given: status, code, message, field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def check_subject(value: str, field: str) -> None:
    """400 unless `value` is a literal NATS subject (no wildcard, blank or control character)."""
    if not ingest_batch.subject_ok(value):
        raise Refused(
            400,
            "INVALID_SUBJECT",
            f"{field}: {value!r} is not a valid subject to publish to (no wildcard, blank or control "
            f"character, at most {MAX_SUBJECT_BYTES} bytes)",
            field,
        )


def check_addresses(subject: str, reply: str | None) -> None:
    """check_subject for the subject and, when given, the reply subject."""
    check_subject(subject, "subject")
    if reply is not None:
        check_subject(reply, "reply")


def forwarded_headers(raw_headers: Any) -> list[tuple[str, str]]:
    """The request headers that become NATS headers, in order, names as sent."""
    pairs = [(k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in raw_headers]
    # Headers named in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
    listed = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    out = []
    for name, value in pairs:
        lower = name.lower()
        if lower in FORWARD_EXCLUDED or lower in listed or lower.startswith(FORWARD_EXCLUDED_PREFIXES):
            continue
        out.append((canonical_name(name), value))
    return out


def header_block(pairs: list[tuple[str, str]], priority: str | None = None) -> bytes | None:
    """A NATS header block (`NATS/1.0\\r\\n...`) from name/value pairs, KPI-Priority set when given."""
    headers: bytes | None = None
    for name, value in pairs:
        if priority is not None and name.lower() == "kpi-priority":
            continue
        try:
            headers = add_header(headers, name, value)
        except ValueError as err:
            raise Refused(400, "INVALID_HEADER", f"header {name!r}: {err}", "headers") from err
    if priority is not None:
        headers = add_header(headers, "KPI-Priority", priority)
    return headers


def _retry_after(sidecar: Sidecar, subject: str, reason: str | None) -> int:
    engine = sidecar.engine
    if reason == "circuit_breaker":
        now = sidecar.clock()
        for snap in engine.breakers():
            if snap.subject == subject and snap.next_attempt_at is not None:
                return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(snap.next_attempt_at - now))))
    if reason in ("sampling", "low_priority", "circuit_breaker"):
        # The level steps down no sooner than one recovery delay from now.
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(engine.config.recovery_delay_ms / 1000))))
    return 1


def publish_one(
    sidecar: Sidecar,
    subject: str,
    reply: str | None,
    payload: bytes,
    headers: bytes | None,
    header_priority: str | None,
    now: float,
) -> tuple[int, dict[str, Any]]:
    """Offer one message, its subjects already checked; (HTTP status, what happened). Refused if oversized."""
    size = len(payload) + (len(headers) if headers is not None else 0)
    if size > sidecar.max_payload:
        raise Refused(
            413,
            "MAX_PAYLOAD_EXCEEDED",
            f"message of {size} bytes (headers included) exceeds the upstream's max_payload of "
            f"{sidecar.max_payload} bytes",
            "body",
        )
    priority, rule = sidecar.engine.classify(subject, header_priority)
    decision = sidecar.publisher.publish_message(subject, reply, payload, headers, now)
    return outcome(sidecar, subject, priority.label, rule, decision, size)


def outcome(
    sidecar: Sidecar, subject: str, priority: str, rule: PolicyRule | None, decision: Decision, size: int
) -> tuple[int, dict[str, Any]]:
    """HTTP status and result of one decision: 202, or 429 for a refusal the rule says to reject."""
    verdict = decision.verdict
    result: dict[str, Any] = {"subject": subject, "priority": priority, "size": size, "reason": None}
    if verdict is Verdict.FORWARD:
        return 202, {**result, "result": "forwarded"}
    if verdict is Verdict.QUEUE:
        # A critical message with no room in memory went to the disk spool (Publisher.offer).
        if decision.reason == "spooled":
            return 202, {**result, "result": "spooled"}
        return 202, {**result, "result": "queued"}
    if verdict is Verdict.BLOCK:
        return 429, {**result, "result": "blocked", "reason": "no_room", "retryAfterSeconds": 1}
    reason = decision.reason or "dropped"
    kind = "sampled_out" if reason == "sampling" else "dropped"
    on_refuse = rule.on_refuse if rule is not None and rule.on_refuse is not None else OnRefuse.REJECT
    if on_refuse is OnRefuse.REJECT:
        retry = _retry_after(sidecar, subject, reason)
        return 429, {**result, "result": kind, "reason": reason, "retryAfterSeconds": retry}
    return 202, {**result, "result": kind, "reason": reason}


def _refused_error(data: dict[str, Any]) -> ApiError:
    retry = data.get("retryAfterSeconds", 1)
    message = f"the message was refused ({data.get('reason')}); retry after {retry} s"
    return ApiError(429, "REFUSED", message, data, headers={"Retry-After": str(retry)})


def _check_running(sidecar: Sidecar) -> None:
    if sidecar.shutting_down:
        raise ApiError(
            503, "SHUTTING_DOWN", "the sidecar is shutting down", None, headers={"Retry-After": "1"}
        )


def _api_error(err: Refused) -> ApiError:
    return ApiError(err.status, err.code, err.message, {"field": err.field, "errors": [err.message]})


async def post_publish_subject(request: web.Request) -> web.Response:
    """POST /publish/{subject}: the body is the payload; 202 with the result, 429 when refused."""
    sidecar = request.app[SIDECAR_KEY]
    _check_running(sidecar)
    subject = request.match_info["subject"]
    reply = request.query.get("reply")
    try:
        # Before reading the body: a bad subject is refused without taking it in.
        check_addresses(subject, reply)
        payload = await request.read()
        pairs = forwarded_headers(request.raw_headers)
        headers = header_block(pairs)
        header_priority = next((v for k, v in pairs if k.lower() == "kpi-priority"), None)
        status, data = publish_one(
            sidecar, subject, reply, payload, headers, header_priority, sidecar.clock()
        )
    except Refused as err:
        raise _api_error(err) from err
    if status == 429:
        raise _refused_error(data)
    return envelope(data, status=status)


def _decode_batch(raw: bytes, max_items: int) -> list[Any]:
    text = raw.lstrip()
    if not text:
        raise ApiError(400, "INVALID_BODY", "an empty batch", {"field": None})
    if text[:1] == b"[":
        try:
            items = msgspec.json.decode(text)
        except msgspec.DecodeError as err:
            raise ApiError(
                400, "INVALID_JSON", f"the body is not valid JSON: {err}", {"field": None}
            ) from err
        if not isinstance(items, list):
            raise ApiError(400, "INVALID_BODY", "a JSON array is expected", {"field": None})
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        items = []
        # One line past the limit is enough to refuse the batch: decode no more.
        for line in lines[: max_items + 1]:
            try:
                items.append(msgspec.json.decode(line))
            except msgspec.DecodeError as err:
                items.append(_BadLine(str(err)))
    if len(items) > max_items:
        raise ApiError(
            413,
            "TOO_MANY_ITEMS",
            f"a batch holds at most {max_items} messages (http.maxBatchItems)",
            {"field": None, "maxItems": max_items},
        )
    return items


class _BadLine:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _item_message(item: BatchItem) -> tuple[bytes, bytes | None, str | None]:
    if item.data is not None and item.data_base64 is not None:
        raise Refused(400, "INVALID_ITEM", "give either data or dataBase64, not both", "data")
    if item.data_base64 is not None:
        try:
            payload = base64.b64decode(item.data_base64, validate=True)
        except (binascii.Error, ValueError) as err:
            raise Refused(
                400, "INVALID_ITEM", f"dataBase64 is not valid base64: {err}", "dataBase64"
            ) from err
    else:
        payload = (item.data or "").encode("utf-8", "surrogateescape")
    pairs: list[tuple[str, str]] = []
    for name, value in (item.headers or {}).items():
        for one in value if isinstance(value, list) else [value]:
            pairs.append((canonical_name(name), one))
    headers = header_block(pairs, item.priority)
    header_priority = item.priority or next((v for k, v in pairs if k.lower() == "kpi-priority"), None)
    return payload, headers, header_priority


async def post_publish_batch(request: web.Request) -> web.Response:
    """POST /publish: a JSON array or NDJSON of messages; 202 with one result per item, in order."""
    sidecar = request.app[SIDECAR_KEY]
    _check_running(sidecar)
    raw = await request.read()
    now = sidecar.clock()
    typed = ingest_batch.decode_items(raw, BatchItem)
    if typed is not None and 0 < len(typed) <= sidecar.config.http.max_batch_items:
        fast = ingest_batch.publish_plain(sidecar, typed, now)
        if fast is not None:
            n = len(typed)
            return envelope({"count": n, "summary": {"forwarded": n}, "results": fast}, 202)
    items = _decode_batch(raw, sidecar.config.http.max_batch_items)
    results: list[dict[str, Any]] = []
    summary: dict[str, int] = {}
    retry_after = 0
    for index, obj in enumerate(items):
        try:
            if isinstance(obj, _BadLine):
                raise Refused(400, "INVALID_JSON", f"line is not valid JSON: {obj.error}")
            try:
                item = msgspec.convert(obj, BatchItem)
            except msgspec.ValidationError as err:
                raise Refused(400, "INVALID_ITEM", str(err)) from err
            payload, headers, header_priority = _item_message(item)
            check_addresses(item.subject, item.reply)
            status, data = publish_one(
                sidecar, item.subject, item.reply, payload, headers, header_priority, now
            )
        except Refused as err:
            status = err.status
            data = {"result": "invalid", "error": err.message, "code": err.code, "field": err.field}
        data = {"index": index, "status": status, **data}
        if status == 429:
            retry_after = max(retry_after, int(data.get("retryAfterSeconds", 1)))
        summary[data["result"]] = summary.get(data["result"], 0) + 1
        results.append(data)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return envelope({"count": len(results), "summary": summary, "results": results}, 202, headers)


def create_ingest_app(sidecar: Sidecar) -> web.Application:
    """Build the ingest application for one sidecar."""
    app = web.Application(middlewares=[error_middleware], client_max_size=sidecar.config.http.max_body_bytes)
    app[SIDECAR_KEY] = sidecar
    # The subject is the rest of the path, so a subject may hold a "/".
    app.router.add_post(r"/publish/{subject:[\s\S]+}", post_publish_subject)
    app.router.add_post("/publish", post_publish_batch)
    return app
