"""HTTP plumbing of the admin port: the JSON envelopes, the error middleware, auth (bearer token or
loopback, CSRF guard), body reading and the small value helpers every handler shares.

Every JSON answer is an envelope: `{"success": true, "data": ..., "timestamp": ...}` or
`{"success": false, "error": {"code", "message", "details"}, "timestamp": ...}`. Mutations (POST, PUT)
need `Authorization: Bearer <admin.token>` when a token is configured, else a loopback client.
The HTTP ingest port (proxy/ports/http_ingest.py) uses the same envelopes and error middleware.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from proxy.admin.history import iso_timestamp
from proxy.admin.keys import MAX_BODY_KEY, TOKEN_KEY

log = logging.getLogger(__name__)

MUTATING_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
STATUS_CODES: Final = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- envelopes -----------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answer: HTTP status, machine code, message, details (e.g. the offending field)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def dumps(obj: Any) -> str:
    """JSON text by msgspec (Structs, dicts and lists alike)."""
    return msgspec.json.encode(obj).decode()


def envelope(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """The success envelope `{"success": true, "data": ..., "timestamp": ...}`."""
    body = {"success": True, "data": data, "timestamp": _timestamp()}
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The error envelope `{"success": false, "error": {"code", "message", "details"}}`."""
    body = {
        "success": False,
        "error": {"code": code, "message": message, "details": details},
        "timestamp": _timestamp(),
    }
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def _timestamp() -> str:
    return iso_timestamp(time.time())


def finite(value: float) -> float:
    """JSON has no infinity: clamp to the largest float (a threshold near zero makes a ratio infinite)."""
    if math.isnan(value):
        return 0.0
    if math.isinf(value):
        return sys.float_info.max if value > 0 else -sys.float_info.max
    return value


def validation_error(err: msgspec.ValidationError | ValueError, default_field: str | None = None) -> ApiError:
    """A 400 naming the offending field, from msgspec's "... - at `$.field`" wording."""
    message = str(err)
    field = default_field
    if " - at `$" in message:
        text, _, where = message.partition(" - at `$")
        field = where.rstrip("`").lstrip(".") or default_field
        message = f"{field}: {text}" if field else text
    return ApiError(400, "VALIDATION_ERROR", message, {"field": field, "errors": [message]})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, including aiohttp's own 404/405/413 and unexpected ones, leaves in the error envelope."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.code, err.message, err.details, err.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = STATUS_CODES.get(exc.status, (exc.reason or "ERROR").upper().replace(" ", "_"))
        message = exc.text or exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, message, None, headers or None)
    except ConnectionResetError:
        # The client hung up before its body arrived: nothing to answer, nothing wrong on our side.
        # (The answer goes nowhere; returning one keeps aiohttp from logging a traceback.)
        log.info("admin API: client hung up during %s %s", request.method, request.path)
        return error_response(400, "CLIENT_DISCONNECTED", "the client closed the connection mid-request")
    except Exception:
        # Nothing a client sends may take the process down: log it and answer 500.
        log.exception("admin API: unexpected error on %s %s", request.method, request.path)
        return error_response(500, "INTERNAL_ERROR", "unexpected error; see the sidecar's log")


def is_loopback(remote: str | None) -> bool:
    """Whether the peer address is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped loopback)."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Body size limit for every request; bearer token (or loopback origin) for every mutation."""
    max_body = request.app[MAX_BODY_KEY]
    length = request.content_length
    if length is not None and length > max_body:
        raise ApiError(
            413, "PAYLOAD_TOO_LARGE", f"request body of {length} bytes exceeds the limit of {max_body} bytes"
        )
    if request.method in MUTATING_METHODS:
        token = request.app[TOKEN_KEY]
        if token:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            expected = token.encode("utf-8", "surrogateescape")
            supplied = given.strip().encode("utf-8", "surrogateescape")
            # compare_digest first, whatever the scheme, so the timing says nothing about the token.
            valid = hmac.compare_digest(supplied, expected)
            if scheme.lower() != "bearer" or not valid:
                raise ApiError(
                    401,
                    "UNAUTHORIZED",
                    "this endpoint needs the header Authorization: Bearer <admin token>",
                    headers={"WWW-Authenticate": 'Bearer realm="kpi-sidecar"'},
                )
        elif not is_loopback(request.remote):
            raise ApiError(
                403,
                "FORBIDDEN",
                "no admin token is configured: changes are accepted from loopback clients only",
                {"remote": request.remote},
            )
        elif (origin := foreign_origin(request)) is not None:
            raise ApiError(
                403,
                "FORBIDDEN",
                "no admin token is configured: a browser may make changes only from the admin page "
                "itself, opened on a loopback address",
                {"origin": origin},
            )
    return await handler(request)


LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.", "ip6-localhost"})


def foreign_origin(request: web.Request) -> str | None:
    """The `Origin` (or `Sec-Fetch-Site`) of a browser request not sent by the admin page on loopback.

    Without a token, loopback is the only check, and any web page open in a browser on the same machine
    could otherwise POST to 127.0.0.1 (CSRF), or reach it under its own name by DNS rebinding. Clients
    that are not browsers send neither header and are not affected.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        site = request.headers.get("Sec-Fetch-Site")
        return None if site in (None, "same-origin", "none") else f"Sec-Fetch-Site: {site}"
    host = request.host
    try:
        name = (urlsplit(f"//{host}").hostname or "").lower()
    except ValueError:
        return origin
    local = name in LOOPBACK_NAMES or is_loopback(name)
    if origin.rstrip("/") != f"{request.scheme}://{host}" or not local:
        return origin
    return None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 when it is not one, 413 when it is too large."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "INVALID_BODY", "a JSON object body is required", {"field": None})
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise ApiError(400, "INVALID_JSON", f"the body is not valid JSON: {err}", {"field": None}) from err
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_BODY", "the body must be a JSON object", {"field": None})
    return body


# -- clocks ----------------------------------------------------------------------------------------------
def wall_offset(clock: Callable[[], float]) -> float:
    """Add to a time on the sidecar's monotonic `clock` to get epoch seconds (read once per request)."""
    return time.time() - clock()


def wall(offset: float, monotonic: float | None) -> str | None:
    """A monotonic time as an ISO timestamp (None stays None); `offset` from wall_offset()."""
    return None if monotonic is None else iso_timestamp(monotonic + offset)
