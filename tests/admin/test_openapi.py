"""The OpenAPI document is true: every route is documented and vice versa, schemas are valid, and a
schemathesis run against a running sidecar finds no server error and no answer outside the document."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.admin.api import create_admin_app
from proxy.admin.openapi import build_openapi
from proxy.config.schema import build_config
from proxy.sidecar import Sidecar
from tests.admin.api import call

TOKEN = "fuzz-token"
# Whole run bounded: a few examples per operation, and a wall-clock budget.
EXAMPLES = 300
BUDGET_S = 45.0


async def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    sidecar = Sidecar(build_config({"spool": {"path": None}}, env={}))
    app = create_admin_app(sidecar, CollectorRegistry())
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    doc = build_openapi()
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented


def test_the_document_is_valid_openapi_31() -> None:
    doc = build_openapi()
    assert doc["openapi"] == "3.1.0"
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    operation_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in ("post", "put"):
                assert op["security"] == [{"bearerAuth": []}], (method, path)
                assert {"401", "403", "413"} <= set(op["responses"]), (method, path)
    # schemathesis accepts it.
    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == len(operation_ids)


@pytest.fixture(scope="module")
def fuzzed(stack_factory: Any) -> Any:
    return stack_factory({"admin": {"token": TOKEN, "maxBodyBytes": 65536}})


def test_schemathesis_finds_no_server_error(fuzzed: Any) -> None:
    doc = call(fuzzed.admin, "GET", "/api/backpressure/openapi.json").json
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    strategy = st.one_of(
        [op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode]
    )
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    deadline = time.monotonic() + BUDGET_S
    seen: set[tuple[str, str]] = set()
    statuses: dict[int, int] = {}
    auth = {"Authorization": f"Bearer {TOKEN}"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if time.monotonic() > deadline:
            return
        seen.add((case.method, case.path))
        response = case.call_and_validate(base_url=fuzzed.admin, headers=auth, checks=checks, timeout=10)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if case.path.endswith("/load-test") and case.method == "POST":
            # Never leave generated traffic running (up to 20000 msg/s for an hour).
            call(fuzzed.admin, "POST", "/api/backpressure/load-test/stop", token=TOKEN)

    try:
        run()
    finally:
        call(fuzzed.admin, "POST", "/api/backpressure/load-test/stop", token=TOKEN)
        call(fuzzed.admin, "POST", "/api/backpressure/config/reset", token=TOKEN)
    assert fuzzed.sidecar.proc.poll() is None
    assert len(seen) >= len(operations) // 2, seen
    # Both valid and invalid requests were made.
    assert statuses.get(200, 0) and statuses.get(400, 0), statuses
    assert "Traceback" not in fuzzed.sidecar.log()
