"""GET /api/backpressure/fleet and the fleet parts of /health/detailed and /metrics, against real processes
(documented shapes checked against the OpenAPI document)."""

from __future__ import annotations

import tempfile
import urllib.request
from typing import Any

from tests.admin.api import call, check_schema, wait_for

P = "/api/backpressure"


def test_without_a_fleet_the_view_says_so(stack: Any) -> None:
    answer = check_schema(call(stack.admin, "GET", f"{P}/fleet"), f"{P}/fleet")
    assert answer.status == 200
    assert answer.data["enabled"] is False and answer.data["members"] == []
    assert answer.data["rateCeiling"] == 100000  # the local maxPublishRate of the test configuration
    detailed = check_schema(call(stack.admin, "GET", f"{P}/health/detailed"), f"{P}/health/detailed")
    assert "fleet" not in detailed.data["components"]
    with urllib.request.urlopen(stack.admin + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "# TYPE kpi_fleet_members gauge" in text  # the family is there for dashboards, without samples
    assert "\nkpi_fleet_members " not in text


def test_with_a_fleet_the_view_lists_this_member_and_validates(stack_factory: Any) -> None:
    store = tempfile.mkdtemp(prefix="kpi-js-")
    fleet_stack = stack_factory(
        {
            "fleet": {
                "name": "api",
                "bucket": "admin_test",
                "maxPublishRate": 500,
                "memberId": "only",
                "intervalS": 0.5,
                "ttlS": 2,
            }
        },
        nats_conf=f'jetstream {{ store_dir: "{store}" }}',
    )
    view = wait_for(
        lambda: (d := call(fleet_stack.admin, "GET", f"{P}/fleet").data)["mode"] == "shared" and d
    )
    check_schema(call(fleet_stack.admin, "GET", f"{P}/fleet"), f"{P}/fleet")
    assert view["enabled"] and view["name"] == "api" and view["bucket"] == "admin_test"
    assert view["budget"] == 500 and view["rateCeiling"] == 500 and view["kvAvailable"]
    (member,) = view["members"]
    assert member["id"] == "only" and member["own"] and member["share"] == 500
    assert view["counters"]["putsOk"] >= 1 and view["counters"]["bytesOut"] > 0
    detailed = check_schema(call(fleet_stack.admin, "GET", f"{P}/health/detailed"), f"{P}/health/detailed")
    fleet = detailed.data["components"]["fleet"]
    assert fleet["status"] == "ok" and fleet["mode"] == "shared" and not fleet["fallback"]
    assert fleet_stack.sidecar.metric("kpi_fleet_members") == 1
    assert fleet_stack.sidecar.metric("kpi_fleet_budget_rate") == 500
