"""A running sidecar exports every kpi_* metric that the Grafana dashboards and the alert rules use."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.deploy.metric_names import CATALOGUE, exported_families, resolve_family, used_metric_names


def fetch_metrics(sidecar: Any) -> str:
    """GET {admin_url}/metrics, with the admin token if the fixture has one."""
    request = urllib.request.Request(f"{sidecar.admin_url}/metrics")
    token = getattr(sidecar, "admin_token", None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as err:
        pytest.fail(f"GET {request.full_url} answered {err.code} {err.reason}", pytrace=False)


def test_sidecar_exports_every_metric_used_by_dashboards_and_alerts(sidecar: Any) -> None:
    families = exported_families(fetch_metrics(sidecar))
    missing = {
        name: sorted(files)
        for name, files in used_metric_names().items()
        if resolve_family(name, families) is None
    }
    exported = sorted(name for name in families if name.startswith("kpi_"))
    assert not missing, f"used but not exported: {missing}\nexported kpi_* families: {exported}"


def test_sidecar_exports_the_catalogue_with_its_types(sidecar: Any) -> None:
    families = exported_families(fetch_metrics(sidecar))
    wrong = {
        name: families.get(name, "missing") for name, kind in CATALOGUE.items() if families.get(name) != kind
    }
    assert not wrong, f"expected types {CATALOGUE}, got (name: exported type) {wrong}"
