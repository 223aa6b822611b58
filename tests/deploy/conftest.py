"""Fixtures of the deployment tests: the external tools they need and the kustomize builds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metric_names import REPO_ROOT

K8S_DIR = REPO_ROOT / "k8s"
# Kustomization directory -> the preset its sidecar config must name.
KUSTOMIZATIONS: dict[str, str] = {
    "base": "production",
    "overlays/dev": "development",
    "overlays/prod": "production",
    "overlays/keda": "production",
    "overlays/hpa": "production",
}
COMPONENT = K8S_DIR / "components" / "kpi-sidecar"
APT_PACKAGES = Path(__file__).with_name("APT_PACKAGES")


def require_tool(name: str, how: str) -> str:
    """The path of `name`, or a test failure (never a skip) that says how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {how}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool(
        "promtool",
        f"install the Debian package `prometheus` (listed in {APT_PACKAGES.relative_to(REPO_ROOT)}: "
        "apt-get install prometheus)",
    )


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_tool(
        "kubectl",
        "kubectl (with its built-in kustomize, >= 1.27) comes with this machine image; "
        "Debian's `kubernetes-client` is too old for `patches:`",
    )


def kustomize_build(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, parsed; a build error fails the test with kustomize's message."""
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def built(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Kustomization name ("base", "overlays/dev", "overlays/prod") -> its built resources."""
    return {name: kustomize_build(kubectl, K8S_DIR / name) for name in KUSTOMIZATIONS}
