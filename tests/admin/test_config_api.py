"""GET/PUT /config and POST /config/reset: partial, validated as a whole, atomic, reset to the file."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin.api import call, check_schema

P = "/api/backpressure"
CONFIG = f"{P}/config"
FILE_RULES = [{"subject": "kpi.payment.>", "priority": "critical"}]


@pytest.fixture(scope="module")
def configured(stack_factory: Any) -> Any:
    return stack_factory({"policies": FILE_RULES, "backpressure": {"recoveryDelayMs": 4000}})


@pytest.fixture(autouse=True)
def reset(configured: Any) -> Any:
    yield
    assert call(configured.admin, "POST", f"{CONFIG}/reset").status == 200


def get_config(stack: Any) -> dict[str, Any]:
    return check_schema(call(stack.admin, "GET", CONFIG), CONFIG).data


def test_the_seed_example_updates_only_what_it_names(configured: Any) -> None:
    before = get_config(configured)
    answer = check_schema(
        call(configured.admin, "PUT", CONFIG, {"maxQueueSize": 20000, "enableSampling": True}), CONFIG, "PUT"
    )
    assert answer.status == 200
    assert answer.data["changed"] == ["maxQueueSize"]
    after = get_config(configured)
    # GET /config says the value now comes from the API, and that the file would undo it.
    assert before["sources"]["maxQueueSize"] == "file" and before["overrides"] == []
    assert after == {
        **before,
        "maxQueueSize": 20000,
        "sources": {**before["sources"], "maxQueueSize": "api"},
        "overrides": [{"key": "maxQueueSize", "value": 20000, "fileValue": before["maxQueueSize"]}],
    }
    # The engine applies it: the status and the Prometheus gauge show the new bound.
    assert call(configured.admin, "GET", f"{P}/status").data["maxQueueSize"] == 20000
    metrics = call(configured.admin, "GET", "/metrics").body.decode()
    assert "kpi_backpressure_queue_max_size 20000.0" in metrics


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"maxQueueSize": 30000, "noSuchKey": 1}, "noSuchKey", "UNKNOWN_KEY"),
        ({"maxQueueSize": 30000, "maxPublishRate": -5}, "maxPublishRate", "VALIDATION_ERROR"),
        ({"maxQueueSize": 30000, "enableBatching": "yes"}, "enableBatching", "VALIDATION_ERROR"),
        (
            {"maxQueueSize": 30000, "recoveryThresholdPercent": 5000},
            "recoveryThresholdPercent",
            "VALIDATION_ERROR",
        ),
        ({"maxQueueSize": 10**12}, "maxQueueSize", "VALIDATION_ERROR"),
        ({"maxQueueSize": 30000, "policies": [{"subject": "a..b"}]}, "policies[0]", "VALIDATION_ERROR"),
        (
            {"maxQueueSize": 30000, "policies": [{"subject": "a", "priority": "urgent"}]},
            "policies[0].priority",
            None,
        ),
        ({"maxQueueSize": 30000, "policies": [{"subject": "a", "color": "red"}]}, "policies[0].color", None),
    ],
)
def test_a_bad_update_names_the_field_and_changes_nothing(
    configured: Any, body: dict[str, Any], field: str, code: str | None
) -> None:
    before = get_config(configured)
    answer = check_schema(call(configured.admin, "PUT", CONFIG, body), CONFIG, "PUT")
    assert answer.status == 400, answer
    assert answer.error["details"]["field"] == field
    if code is not None:
        assert answer.error["code"] == code
    assert field.split("[")[0].split(".")[0] in answer.error["message"]
    assert get_config(configured) == before


def test_policies_replace_the_rules_and_reset_restores_the_file(configured: Any) -> None:
    rules = [
        {"subject": "kpi.marketing.>", "priority": "low", "onRefuse": "drop"},
        {"subject": "kpi.*.alerts", "priority": "high"},
    ]
    answer = check_schema(
        call(configured.admin, "PUT", CONFIG, {"policies": rules, "recoveryDelayMs": 100}), CONFIG, "PUT"
    )
    assert answer.status == 200
    assert sorted(answer.data["changed"]) == ["policies", "recoveryDelayMs"]
    data = get_config(configured)
    assert [(r["subject"], r["priority"], r["onRefuse"]) for r in data["policies"]] == [
        ("kpi.marketing.>", "low", "drop"),
        ("kpi.*.alerts", "high", None),
    ]
    # The new rules classify at once: an HTTP publish on a marketing subject is now low priority.
    published = call(configured.sidecar.http_url, "POST", "/publish/kpi.marketing.ctr", raw=b"x")
    assert published.status == 202 and published.data["priority"] == "low"
    reset = check_schema(call(configured.admin, "POST", f"{CONFIG}/reset"), f"{CONFIG}/reset", "POST")
    assert reset.status == 200
    restored = get_config(configured)
    assert restored["recoveryDelayMs"] == 4000
    assert [r["subject"] for r in restored["policies"]] == ["kpi.payment.>"]
    published = call(configured.sidecar.http_url, "POST", "/publish/kpi.marketing.ctr", raw=b"x")
    assert published.data["priority"] == "medium"


def test_an_empty_update_is_valid_and_changes_nothing(configured: Any) -> None:
    before = get_config(configured)
    answer = call(configured.admin, "PUT", CONFIG, {})
    assert answer.status == 200 and answer.data["changed"] == []
    assert get_config(configured) == before
