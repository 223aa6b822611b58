"""Admin API security: bearer token on mutations, loopback-only without a token, body limits, bad input."""

from __future__ import annotations

import http.client
import json
import random
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from proxy.admin.api import create_admin_app, is_loopback
from proxy.config.schema import build_config
from proxy.sidecar import Sidecar
from tests.admin.api import call, check_schema

P = "/api/backpressure"
TOKEN = "s3cret-token"
MUTATIONS = [
    ("PUT", f"{P}/config", {"maxQueueSize": 5000}),
    ("POST", f"{P}/config/reset", None),
    ("POST", f"{P}/circuit-breaker", {"subject": "a.b", "action": "open"}),
    (
        "POST",
        f"{P}/load-test",
        {"messagesPerSecond": 1, "durationSeconds": 1, "messageSize": 32, "subjects": ["x"]},
    ),
    ("POST", f"{P}/load-test/stop", None),
    ("POST", f"{P}/actions/drain-queue", None),
    ("POST", f"{P}/actions/clear-queue", None),
]


@pytest.fixture(scope="module")
def secured(stack_factory: Any) -> Any:
    # The token comes from the environment, as in a Kubernetes Secret; small body limit for the 413 tests.
    return stack_factory({"admin": {"maxBodyBytes": 2048}}, env={"KPI_SIDECAR_ADMIN_TOKEN": TOKEN})


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS)
def test_every_mutation_needs_the_bearer_token(secured: Any, method: str, path: str, body: Any) -> None:
    for token in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
        answer = check_schema(call(secured.admin, method, path, body, token=token), path, method)
        assert answer.status == 401, (token, answer)
        assert answer.error["code"] == "UNAUTHORIZED"
        assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
    basic = call(secured.admin, method, path, body, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401
    ok = call(secured.admin, method, path, body, token=TOKEN)
    assert ok.status in (200, 202), ok


def test_reads_and_prometheus_stay_open_with_a_token(secured: Any) -> None:
    for path in (f"{P}/status", f"{P}/config", f"{P}/health", f"{P}/metrics", "/metrics"):
        assert call(secured.admin, "GET", path).status == 200, path


def test_a_body_above_the_limit_is_413_in_the_envelope(secured: Any) -> None:
    path = f"{P}/config"
    big = json.dumps({"maxQueueSize": 5000, "pad": "x" * 4096}).encode()
    answer = check_schema(call(secured.admin, "PUT", path, raw=big, token=TOKEN), path, "PUT")
    assert answer.status == 413 and answer.error["code"] == "PAYLOAD_TOO_LARGE"
    # The same without Content-Length (chunked): refused while reading.
    host, port = secured.admin.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("PUT", path)
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(3):
        chunk = b"x" * 1500
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    conn.close()


def test_a_body_of_exactly_the_limit_is_taken(secured: Any) -> None:
    # admin.maxBodyBytes is 2048; an empty update padded with JSON whitespace changes nothing.
    path = f"{P}/config"
    at_limit = call(secured.admin, "PUT", path, raw=b"{}".ljust(2048), token=TOKEN)
    assert at_limit.status == 200 and at_limit.data["changed"] == []
    over = call(secured.admin, "PUT", path, raw=b"{}".ljust(2049), token=TOKEN)
    assert over.status == 413 and over.error["code"] == "PAYLOAD_TOO_LARGE"


def test_garbage_bodies_are_400_and_the_process_survives(secured: Any) -> None:
    rng = random.Random(1234)
    bodies = [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"text"',
        b"\xff\xfe\x00",
        b'{"maxQueueSize": "ten"}',
        b'{"maxQueueSize": 1e400}',
        b'{"maxQueueSize": 99999999999999999999999999999}',
        b'{"enableSampling": 1}',
        b'{"policies": "all"}',
        b'{"policies": [{"subject": ""}]}',
        b'{"policies": [{"subject": "a.>.b"}]}',
        *(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(20)),
    ]
    for raw in bodies:
        for path, method in (
            (f"{P}/config", "PUT"),
            (f"{P}/circuit-breaker", "POST"),
            (f"{P}/load-test", "POST"),
        ):
            answer = call(secured.admin, method, path, raw=raw, token=TOKEN)
            assert answer.status == 400, (path, raw, answer)
            check_schema(answer, path, method)
    assert call(secured.admin, "GET", f"{P}/health").status == 200
    assert secured.sidecar.proc.poll() is None


def test_loopback_detection() -> None:
    for address in ("127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(address), address
    for address in ("10.0.0.1", "192.168.1.1", "::ffff:10.0.0.1", "2001:db8::1", "", None, "garbage"):
        assert not is_loopback(address), address


def _remote(address: str) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request.clone(remote=address))

    return middleware


async def _in_process_app(config: dict[str, Any], remote: str) -> tuple[TestClient, Sidecar]:
    sidecar = Sidecar(build_config({"spool": {"path": None}, **config}, env={}))
    app = create_admin_app(sidecar, CollectorRegistry())
    # Pretend the peer is `remote`: inserted before the app's own middlewares.
    app.middlewares.insert(0, _remote(remote))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, sidecar


async def test_without_a_token_mutations_from_other_hosts_are_403() -> None:
    client, _ = await _in_process_app({}, "10.1.2.3")
    try:
        response = await client.put(f"{P}/config", json={"maxQueueSize": 5000})
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "FORBIDDEN"
        response = await client.post(f"{P}/actions/clear-queue")
        assert response.status == 403
        # Reads stay open to everyone.
        assert (await client.get(f"{P}/config")).status == 200
        assert (await client.get("/metrics")).status == 200
    finally:
        await client.close()


async def test_with_a_token_other_hosts_may_change_things() -> None:
    client, sidecar = await _in_process_app({"admin": {"token": TOKEN}}, "10.1.2.3")
    try:
        response = await client.put(
            f"{P}/config", json={"maxQueueSize": 5000}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status == 200
        assert sidecar.engine.config.max_queue_size == 5000
    finally:
        await client.close()
