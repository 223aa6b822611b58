"""HTTP helpers for the admin and ingest tests: a real client (urllib), envelope checks, schema checks."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from proxy.admin.openapi import build_openapi
from tests.conftest import NatsServer, SidecarProcess, sidecar_config

OPENAPI = build_openapi()


class Answer:
    """One HTTP answer: status, headers, raw body and the decoded JSON (None when not JSON)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json: Any = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def data(self) -> Any:
        assert self.json is not None and self.json.get("success") is True, self.json
        return self.json["data"]

    @property
    def error(self) -> dict[str, Any]:
        assert self.json is not None and self.json.get("success") is False, self.json
        return self.json["error"]

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:300]!r})"


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Answer:
    """Send one request; `body` is JSON-encoded, `raw` sent as is."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method)
    if body is not None and raw is None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, dict(err.headers.items()), err.read())


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The OpenAPI schema of an answer, with the document's components to resolve its $refs."""
    operation = OPENAPI["paths"][path][method.lower()]
    response = operation["responses"][str(status)]
    schema = next(iter(response["content"].values()))["schema"]
    return {"allOf": [schema], "components": OPENAPI["components"]}


def check_schema(answer: Answer, path: str, method: str = "GET") -> Answer:
    """Assert that the answer is documented (status) and that its JSON body validates."""
    operation = OPENAPI["paths"][path][method.lower()]
    assert str(answer.status) in operation["responses"], (path, method, answer.status, answer.json)
    schema = response_schema(path, method, answer.status)
    errors = sorted(Draft202012Validator(schema).iter_errors(answer.json), key=str)
    assert not errors, f"{method} {path} -> {answer.status}: {[e.message for e in errors[:5]]}"
    return answer


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy; its value, or AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Stack:
    """A nats-server and a sidecar in front of it, started together and stopped together."""

    def __init__(
        self,
        config_overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        nats_conf: str = "",
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="kpi-admin-"))
        self.nats = NatsServer(self.workdir, extra_conf=nats_conf)
        config = sidecar_config(self.nats.url, **(config_overrides or {}))
        config.setdefault("spool", {"path": str(self.workdir / "spool")})
        self.sidecar = SidecarProcess(self.workdir, config, env=env)

    @property
    def admin(self) -> str:
        return self.sidecar.admin_url

    def close(self) -> None:
        self.sidecar.kill()
        self.nats.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack_factory() -> Iterator[Any]:
    """Start Stacks for one test module; all stopped at its end (import this fixture in a conftest)."""
    stacks: list[Stack] = []

    def make(
        config_overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None, nats_conf: str = ""
    ) -> Stack:
        stack = Stack(config_overrides, env, nats_conf)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()
