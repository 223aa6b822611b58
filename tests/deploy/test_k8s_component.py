"""The kustomize Component that adds kpi-sidecar to any workload, and the autoscaling examples.

A plain application (a Deployment with its own init container and volume, a StatefulSet, and a Deployment
that opts out) is built with the component by `kubectl kustomize`, validated against the Kubernetes
schemas (kubernetes-validate, strict), and must come out with the native sidecar, its probes and its
configuration mount; the KEDA ScaledObject (a CRD: checked for structure) and the HPA target what the
overlays build and read metrics the sidecar exports.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config.schema import build_config
from tests.deploy.conftest import COMPONENT, kustomize_build
from tests.deploy.metric_names import CATALOGUE, REPO_ROOT, names_in_expr, resolve_family
from tests.deploy.test_k8s import CRD_KINDS, K8S_VERSIONS, find

SIDECAR = "kpi-sidecar"
CONFIG_DIR = "/etc/kpi-sidecar"
K8S_DEFAULT_GRACE_S = 30

WEB = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "terminationGracePeriodSeconds": 90,
                "initContainers": [{"name": "migrate", "image": "web:1", "command": ["migrate"]}],
                "containers": [
                    {
                        "name": "web",
                        "image": "web:1",
                        "env": [{"name": "NATS_URL", "value": "nats://127.0.0.1:4222"}],
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    }
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        },
    },
}
DB = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "metadata": {"name": "ledger"},
    "spec": {
        "serviceName": "ledger",
        "selector": {"matchLabels": {"app": "ledger"}},
        "template": {
            "metadata": {"labels": {"app": "ledger"}},
            "spec": {"containers": [{"name": "ledger", "image": "ledger:1"}]},
        },
    },
}
OPTED_OUT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "batch", "annotations": {"kpi-sidecar/inject": "false"}},
    "spec": {
        "selector": {"matchLabels": {"app": "batch"}},
        "template": {
            "metadata": {"labels": {"app": "batch"}},
            "spec": {"containers": [{"name": "batch", "image": "batch:1"}]},
        },
    },
}


def app_dir(tmp_path: Path, kustomization: str, workloads: list[dict[str, Any]]) -> Path:
    directory = tmp_path / "my-app"
    directory.mkdir()
    (directory / "workloads.yaml").write_text(yaml.safe_dump_all(workloads))
    component = os.path.relpath(COMPONENT, directory)
    (directory / "kustomization.yaml").write_text(kustomization.replace("COMPONENT", component))
    return directory


@pytest.fixture
def with_component(kubectl: str, tmp_path: Path) -> list[dict[str, Any]]:
    kustomization = "resources: [workloads.yaml]\ncomponents: [COMPONENT]\n"
    return kustomize_build(kubectl, app_dir(tmp_path, kustomization, [WEB, DB, OPTED_OUT]))


def validate_strictly(resources: list[dict[str, Any]]) -> None:
    for version in K8S_VERSIONS:
        for resource in resources:
            if (resource["apiVersion"], resource["kind"]) in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                where = f"{resource['kind']}/{resource['metadata']['name']}"
                pytest.fail(f"{where} ({version}): {'.'.join(map(str, err.path))}: {err.message}")


def workload(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return find(resources, kind, name)


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod.get("initContainers", []) if c["name"] == SIDECAR]
    return container


def config_of(resources: list[dict[str, Any]]) -> Any:
    text = find(resources, "ConfigMap", "kpi-sidecar-config")["data"]["config.yaml"]
    return build_config(yaml.safe_load(text), env={})


def test_the_component_builds_and_validates_strictly(with_component: list[dict[str, Any]]) -> None:
    kinds = sorted(r["kind"] for r in with_component)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "PodMonitor", "StatefulSet"]
    validate_strictly(with_component)


@pytest.mark.parametrize(("kind", "name"), [("Deployment", "web"), ("StatefulSet", "ledger")])
def test_each_workload_gets_the_native_sidecar_probes_and_config_mount(
    with_component: list[dict[str, Any]], kind: str, name: str
) -> None:
    resource = workload(with_component, kind, name)
    pod = resource["spec"]["template"]["spec"]
    container = sidecar_of(pod)
    # A native sidecar, first of the init containers: up before the workload's own init containers.
    assert pod["initContainers"][0]["name"] == SIDECAR
    assert container["restartPolicy"] == "Always"
    assert container["args"] == ["--config", f"{CONFIG_DIR}/config.yaml"]
    config = config_of(with_component)
    admin_port = int(config.listen.admin.rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in {
        "startupProbe": "/api/backpressure/health",
        "livenessProbe": "/api/backpressure/health",
        "readinessProbe": "/api/backpressure/ready",
    }.items():
        assert container[probe]["httpGet"]["path"] == path
        assert ports[container[probe]["httpGet"]["port"]] == admin_port
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[CONFIG_DIR]]["configMap"]["name"] == "kpi-sidecar-config"
    assert "subPath" not in str(container["volumeMounts"])  # a directory mount: edits reach the file
    assert "emptyDir" in volumes[mounts[config.spool.path]]
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert resource["spec"]["template"]["metadata"]["labels"]["kpi-sidecar/enabled"] == "true"
    # Nothing of the workload's is lost or renamed; its selector is untouched.
    original = WEB if name == "web" else DB
    assert resource["spec"]["selector"] == original["spec"]["selector"]
    assert (
        resource["spec"]["template"]["spec"]["containers"]
        == original["spec"]["template"]["spec"]["containers"]
    )
    own_volumes = {v["name"] for v in original["spec"]["template"]["spec"].get("volumes", [])}
    assert own_volumes <= set(volumes) and all(
        v.startswith("kpi-sidecar-") for v in set(volumes) - own_volumes
    )


def test_the_workloads_grace_and_opt_out_are_respected(with_component: list[dict[str, Any]]) -> None:
    web = workload(with_component, "Deployment", "web")["spec"]["template"]["spec"]
    ledger = workload(with_component, "StatefulSet", "ledger")["spec"]["template"]["spec"]
    assert web["terminationGracePeriodSeconds"] == 90  # never shortened
    assert "terminationGracePeriodSeconds" not in ledger
    # Kubernetes' default grace leaves the application 10 s before the sidecar's drain.
    assert config_of(with_component).shutdown.grace_ms / 1000 + 10 <= K8S_DEFAULT_GRACE_S
    assert workload(with_component, "Deployment", "batch") == OPTED_OUT


def test_the_podmonitor_scrapes_the_sidecars_admin_port(with_component: list[dict[str, Any]]) -> None:
    monitor = find(with_component, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for kind, name in (("Deployment", "web"), ("StatefulSet", "ledger")):
        template = workload(with_component, kind, name)["spec"]["template"]
        assert selector.items() <= template["metadata"]["labels"].items()
        ports = {p["name"]: p["containerPort"] for p in sidecar_of(template["spec"])["ports"]}
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # The application's own port names are not the sidecar's (the PodMonitor matches by name).
    assert endpoint["port"] not in {
        p["name"] for p in WEB["spec"]["template"]["spec"]["containers"][0]["ports"]
    }


def fenced_yaml(path: Path, marker: str) -> str:
    """The first ```yaml block of a Markdown file that contains `marker`."""
    for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S):
        if marker in block:
            return block
    raise AssertionError(f"{path.name} has no yaml block with {marker!r}")


@pytest.mark.parametrize("doc", ["README.md", "docs/deployment.md"])
def test_the_three_lines_of_the_docs_add_the_sidecar(kubectl: str, tmp_path: Path, doc: str) -> None:
    block = fenced_yaml(REPO_ROOT / doc, "components:")
    lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 3, lines
    kustomization = re.sub(r"- \S*k8s/components/kpi-sidecar\S*", "- COMPONENT", block)
    kustomization = kustomization.replace("deployment.yaml", "workloads.yaml")
    resources = kustomize_build(kubectl, app_dir(tmp_path, kustomization, [WEB]))
    validate_strictly(resources)
    assert sidecar_of(workload(resources, "Deployment", "web")["spec"]["template"]["spec"])


def test_the_documented_persistent_spool_for_a_statefulset(kubectl: str, tmp_path: Path) -> None:
    patch = fenced_yaml(REPO_ROOT / "docs" / "deployment.md", "volumeClaimTemplates")
    kustomization = "resources: [workloads.yaml]\ncomponents: [COMPONENT]\npatches:\n  - path: spool.yaml\n"
    directory = app_dir(tmp_path, kustomization, [WEB, copy.deepcopy(DB)])
    doc = yaml.safe_load(patch)
    doc["metadata"]["name"] = "ledger"
    (directory / "spool.yaml").write_text(yaml.safe_dump(doc))
    resources = kustomize_build(kubectl, directory)
    validate_strictly(resources)
    ledger = workload(resources, "StatefulSet", "ledger")
    volumes = {v["name"] for v in ledger["spec"]["template"]["spec"]["volumes"]}
    claims = {c["metadata"]["name"] for c in ledger["spec"]["volumeClaimTemplates"]}
    assert "kpi-sidecar-spool" in claims and "kpi-sidecar-spool" not in volumes
    mounts = {m["name"] for m in sidecar_of(ledger["spec"]["template"]["spec"])["volumeMounts"]}
    assert "kpi-sidecar-spool" in mounts


# ---- autoscaling: KEDA and the HPA alternative ----

SCALED_OBJECT_SPEC_KEYS = {
    "scaleTargetRef",
    "minReplicaCount",
    "maxReplicaCount",
    "idleReplicaCount",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "advanced",
    "triggers",
    "fallback",
}
PROMETHEUS_TRIGGER_KEYS = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "unsafeSsl",
    "queryParameters",
}


def test_keda_scales_the_deployment_on_the_sidecars_load(built: dict[str, list[dict[str, Any]]]) -> None:
    resources = built["overlays/keda"]
    scaled = find(resources, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert set(scaled) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC_KEYS, set(spec) - SCALED_OBJECT_SPEC_KEYS
    deployment = find(resources, "Deployment")
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == (
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"
    ]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert set(metadata) <= PROMETHEUS_TRIGGER_KEYS and all(isinstance(v, str) for v in metadata.values())
    assert metadata["serverAddress"].startswith("http")
    assert float(metadata["threshold"]) > float(metadata["activationThreshold"]) > 0
    query = metadata["query"]
    assert names_in_expr(query) == {"kpi_backpressure_load_percent"}
    assert all(resolve_family(name, CATALOGUE) for name in names_in_expr(query))
    # The query selects this Deployment's pods in this namespace (the PodMonitor's target labels).
    assert f'namespace="{deployment["metadata"]["namespace"]}"' in query
    pod_regex = re.search(r'pod=~"([^"]+)"', query)
    assert pod_regex and re.fullmatch(pod_regex[1], f"{deployment['metadata']['name']}-7d4b9c-x2x9z")
    # The autoscaler owns the replica count.
    assert "replicas" not in deployment["spec"]


def test_hpa_scales_the_deployment_on_a_custom_metric(built: dict[str, list[dict[str, Any]]]) -> None:
    resources = built["overlays/hpa"]
    hpa = find(resources, "HorizontalPodAutoscaler")  # its schema is validated with the others
    deployment = find(resources, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert resolve_family(metric["pods"]["metric"]["name"], CATALOGUE) == "kpi_backpressure_load_percent"
    assert "replicas" not in deployment["spec"]
    # The documented prometheus-adapter rule serves that metric per pod.
    rule = yaml.safe_load(fenced_yaml(REPO_ROOT / "docs" / "deployment.md", "seriesQuery"))["rules"][0]
    assert names_in_expr(rule["seriesQuery"]) == {metric["pods"]["metric"]["name"]}
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
