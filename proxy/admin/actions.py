"""What an operator does through the admin API: circuit breakers (read and operate), load tests
(start, status, stop) and the queue actions (drain now, clear)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from proxy.admin.http import ApiError, envelope, read_json_object, validation_error, wall, wall_offset
from proxy.admin.keys import LOAD_TEST_KEY, SIDECAR_KEY
from proxy.admin.load_test import LoadTestError
from proxy.admin.requests import BreakerAction, LoadTestSpec, is_valid_api_subject
from proxy.admin.responses import Breaker, BreakerResult, Breakers, Cleared, Drained


# -- circuit breakers ------------------------------------------------------------------------------------
def breaker_json(snap: Any, offset: float) -> Breaker:
    """One breaker with wall-clock times; `offset` from wall_offset()."""
    return Breaker(
        subject=snap.subject,
        state=snap.state,
        reason=snap.reason,
        opened_at=wall(offset, snap.opened_at),
        failures=snap.failures,
        next_attempt_at=wall(offset, snap.next_attempt_at),
        backoff_ms=snap.backoff_ms,
    )


async def get_breakers(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    engine = sidecar.engine
    offset = wall_offset(sidecar.clock)
    breakers = [breaker_json(b, offset) for b in engine.breakers()]
    return envelope(
        Breakers(
            enabled=engine.config.enable_circuit_breaker,
            open=sum(1 for b in breakers if b.state == "open"),
            half_open=sum(1 for b in breakers if b.state == "half_open"),
            breakers=breakers,
        )
    )


async def post_breaker(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    body = await read_json_object(request)
    try:
        action = msgspec.convert(body, BreakerAction)
    except msgspec.ValidationError as err:
        raise validation_error(err) from err
    subject = action.subject
    if not is_valid_api_subject(subject):
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"subject: {subject!r} is not a valid subject (no wildcard, blank or control character)",
            {"field": "subject", "errors": [f"$.subject: invalid subject {subject!r}"]},
        )
    engine = sidecar.engine
    now = sidecar.clock()
    if action.action == "open":
        changed = engine.open_breaker(subject, now)
        if not changed and engine.breaker_state(subject).label != "open":
            raise ApiError(409, "BREAKER_TABLE_FULL", "every tracked breaker is open; none can be added")
    elif action.action == "close":
        changed = engine.close_breaker(subject, now)
    else:
        changed = engine.reset_breaker(subject, now)
    snap = next((b for b in engine.breakers() if b.subject == subject), None)
    return envelope(
        BreakerResult(
            subject=subject,
            action=action.action,
            changed=bool(changed),
            state=engine.breaker_state(subject).label,  # type: ignore[arg-type]
            breaker=breaker_json(snap, wall_offset(sidecar.clock)) if snap is not None else None,
        )
    )


# -- load test -------------------------------------------------------------------------------------------
async def post_load_test(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    try:
        spec = msgspec.convert(body, LoadTestSpec)
    except msgspec.ValidationError as err:
        raise validation_error(err) from err
    runner = request.app[LOAD_TEST_KEY]
    try:
        status = await runner.start(spec)
    except LoadTestError as err:
        code = {409: "LOAD_TEST_RUNNING", 503: "SHUTTING_DOWN"}.get(err.status, "VALIDATION_ERROR")
        details = {"field": err.field, "errors": [str(err)]} if err.status == 400 else runner.status()
        raise ApiError(err.status, code, str(err), details) from err
    return envelope(status, status=202)


async def get_load_test_status(request: web.Request) -> web.Response:
    return envelope(request.app[LOAD_TEST_KEY].status())


async def post_load_test_stop(request: web.Request) -> web.Response:
    return envelope(await request.app[LOAD_TEST_KEY].stop())


# -- queue actions ---------------------------------------------------------------------------------------
async def post_drain_queue(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    if not sidecar.upstream.can_send:
        raise ApiError(
            503,
            "UPSTREAM_UNAVAILABLE",
            "the upstream connection cannot take messages now; nothing was drained",
            {"queueSize": sidecar.engine.queue_size, "upstreamConnected": sidecar.upstream.connected},
        )
    forwarded = sidecar.publisher.drain_now()
    return envelope(Drained(forwarded=forwarded, queue_size=sidecar.engine.queue_size))


async def post_clear_queue(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    cleared = sidecar.publisher.clear_queue()
    return envelope(Cleared(cleared=cleared, queue_size=sidecar.engine.queue_size))
