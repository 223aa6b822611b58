"""Kubernetes manifests: schemas, kustomize overlays, and the sidecar wiring against its own config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.config.schema import ENV_OVERRIDES, SidecarConfig, build_config
from tests.deploy.conftest import K8S_DIR, KUSTOMIZATIONS
from tests.deploy.metric_names import REPO_ROOT

# Validated against the oldest release with native sidecars on by default, and the newest schemas shipped.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
# Built on overlays/prod: no placeholder Secret, the real one is created out of band.
ON_PROD = {"overlays/prod", "overlays/keda", "overlays/hpa"}
SIDECAR = "kpi-sidecar"
CONFIG_PATH = "/etc/kpi-sidecar/config.yaml"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


# ---- helpers ----


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_spec(resources: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    return find(resources, kind)["spec"]["template"]["spec"]


def sidecar_container(resources: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    (container,) = [c for c in pod_spec(resources, kind).get("initContainers", []) if c["name"] == SIDECAR]
    return container


def sidecar_config(resources: list[dict[str, Any]]) -> SidecarConfig:
    """The ConfigMap's config.yaml, loaded by the sidecar's own loader (presets applied, no env)."""
    data = yaml.safe_load(find(resources, "ConfigMap", "kpi-sidecar-config")["data"]["config.yaml"])
    return build_config(data, env={})


def port_of(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, quantity
    return float(match[1]) * (units[match[2]] if match[2] else 1 / 2**20)


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


# ---- kustomization structure (no kubectl needed) ----


def kustomization_files(directory: Path) -> set[Path]:
    """Every file a kustomization uses, following bases and components; each must exist and parse."""
    kustomization = directory / "kustomization.yaml"
    assert kustomization.is_file(), f"{directory} has no kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    assert (data["apiVersion"], data["kind"]) in {
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        ("kustomize.config.k8s.io/v1alpha1", "Component"),
    }
    files = {kustomization}
    for entry in data.get("components", []):
        files |= kustomization_files((directory / entry).resolve())
    for entry in data.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            files |= kustomization_files(path)
        else:
            assert path.is_file(), f"{kustomization}: resource {entry} does not exist"
            files.add(path)
    for patch in data.get("patches", []):
        if "path" in patch:
            path = (directory / patch["path"]).resolve()
            assert path.is_file(), f"{kustomization}: patch {patch['path']} does not exist"
            files.add(path)
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(doc, dict) for doc in docs), path
    return files


def resources_of(directory: Path) -> list[dict[str, Any]]:
    """The raw resources (before patches) of a kustomization, its bases and its components."""
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for entry in data.get("components", []):
        out += resources_of((directory / entry).resolve())
    for entry in data.get("resources", []):
        path = (directory / entry).resolve()
        out += resources_of(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    return out


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_kustomization_resources_and_patches_exist_and_parse(
    built: dict[str, list[dict[str, Any]]], name: str
) -> None:
    directory = K8S_DIR / name
    kustomization_files(directory)
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources = {(r["kind"], r["metadata"]["name"]) for r in resources_of(directory)}
    for patch in data.get("patches", []):
        if "target" in patch:
            target = patch["target"]
            assert (target["kind"], target["name"]) in resources, f"{name}: {target} patches nothing"
            continue
        doc = yaml.safe_load((directory / patch["path"]).read_text())
        assert (doc["kind"], doc["metadata"]["name"]) in resources, f"{name}: {patch['path']} patches nothing"
    images = {
        c["image"].rsplit(":", 1)[0]
        for r in built[name]
        if r["kind"] == "Deployment"
        for c in r["spec"]["template"]["spec"]["containers"] + r["spec"]["template"]["spec"]["initContainers"]
    }
    for image in data.get("images", []):
        assert image["name"] in images, f"{name}: image {image['name']} is used by no container"


def test_every_manifest_file_is_used_by_a_kustomization() -> None:
    used = set().union(*(kustomization_files(K8S_DIR / name) for name in KUSTOMIZATIONS))
    on_disk = {path.resolve() for path in K8S_DIR.rglob("*.yaml")}
    assert on_disk - used == set()


# ---- built manifests ----


def test_overlays_build(built: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted(r["kind"] for r in resources) for name, resources in built.items()}
    common = ["ConfigMap", "Deployment", "PodMonitor", "PrometheusRule", "ServiceAccount"]
    assert kinds["base"] == sorted([*common, "Secret"])
    assert kinds["overlays/dev"] == sorted([*common, "Secret"])
    # Production brings its own Secret and adds a PodDisruptionBudget.
    assert kinds["overlays/prod"] == sorted([*common, "PodDisruptionBudget"])
    assert kinds["overlays/keda"] == sorted([*common, "PodDisruptionBudget", "ScaledObject"])
    assert kinds["overlays/hpa"] == sorted([*common, "PodDisruptionBudget", "HorizontalPodAutoscaler"])
    assert {r["metadata"].get("namespace") for r in built["overlays/dev"]} == {"kpi-sidecar-dev"}
    for name in ON_PROD:
        assert {r["metadata"].get("namespace") for r in built[name]} == {"kpi-sidecar-prod"}, name


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_built_manifests_validate_strictly(
    built: dict[str, list[dict[str, Any]]], name: str, version: str
) -> None:
    # kubernetes-validate ships the built-in schemas and works offline; it has none for CRDs (it only
    # warns), so PodMonitor and PrometheusRule are checked by the structural tests below.
    for resource in built[name]:
        if (resource["apiVersion"], resource["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = f"{resource['kind']}/{resource['metadata']['name']}"
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{name}: {where} ({version}): {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            pytest.fail(f"{name}: {err.message}")


PODMONITOR_SPEC_KEYS = {
    "selector",
    "podMetricsEndpoints",
    "namespaceSelector",
    "jobLabel",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "attachMetadata",
}
ENDPOINT_KEYS = {
    "port",
    "portNumber",
    "path",
    "scheme",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "params",
    "authorization",
    "tlsConfig",
    "basicAuth",
    "bearerTokenSecret",
    "enableHttp2",
    "followRedirects",
    "filterRunning",
    "proxyUrl",
}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_podmonitor_structure_and_target(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    resources = built[name]
    monitor = find(resources, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= PODMONITOR_SPEC_KEYS, set(spec) - PODMONITOR_SPEC_KEYS
    selector = spec["selector"]["matchLabels"]
    assert selector and all(isinstance(v, str) for v in selector.values())
    pod_labels = find(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items(), "the PodMonitor selects no pod of the Deployment"
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(endpoint) <= ENDPOINT_KEYS, set(endpoint) - ENDPOINT_KEYS
    assert endpoint["path"] == "/metrics"
    assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
    container = sidecar_container(resources)
    (port,) = [p for p in container["ports"] if p["name"] == endpoint["port"]]
    assert port["containerPort"] == port_of(sidecar_config(resources).listen.admin)


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_prometheusrule_structure(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    rule = find(built[name], "PrometheusRule")
    assert set(rule) <= {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for item in group["rules"]:
            assert set(item) <= RULE_KEYS, set(item) - RULE_KEYS
            assert isinstance(item["expr"], str) and ("alert" in item) != ("record" in item)
            assert DURATION.match(item.get("for", "0s"))
            assert all(
                isinstance(v, str) for v in {**item.get("labels", {}), **item.get("annotations", {})}.values()
            )


@pytest.mark.parametrize(("name", "preset"), list(KUSTOMIZATIONS.items()))
def test_config_map_loads_with_the_overlays_preset(
    built: dict[str, list[dict[str, Any]]], name: str, preset: str
) -> None:
    config = sidecar_config(built[name])
    assert config.preset == preset
    assert config.upstream.servers == ["nats://nats:4222"]
    assert config.upstream.name == "kpi-sidecar"
    assert (config.listen.nats, config.listen.http, config.listen.admin) == (
        "127.0.0.1:4222",
        "127.0.0.1:8080",
        "0.0.0.0:3000",
    )
    assert [(rule.subject, rule.priority) for rule in config.policies] == [
        ("kpi.payment.>", "critical"),
        ("kpi.marketing.>", "low"),
    ]
    assert config.spool.path == "/var/lib/kpi-sidecar/spool"


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_native_sidecar_wiring(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    resources = built[name]
    spec = pod_spec(resources)
    config = sidecar_config(resources)
    container = sidecar_container(resources)
    # A native sidecar: an init container that keeps running, started before the app, stopped after it.
    assert container["restartPolicy"] == "Always"
    assert container.get("args", ["--config", CONFIG_PATH]) == ["--config", CONFIG_PATH]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_mount = mounts[str(Path(CONFIG_PATH).parent)]
    assert volumes[config_mount["name"]]["configMap"]["name"] == "kpi-sidecar-config"
    spool = volumes[mounts[config.spool.path]["name"]]
    assert "emptyDir" in spool or "persistentVolumeClaim" in spool or "ephemeral" in spool
    # The application knows only NATS_URL, on the pod's loopback where the sidecar listens.
    (app,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["NATS_URL"] == f"nats://{config.listen.nats}"
    assert config.listen.nats.startswith("127.0.0.1:")


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_probes(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    resources = built[name]
    container = sidecar_container(resources)
    admin_port = port_of(sidecar_config(resources).listen.admin)
    assert admin_port == 3000
    expected = {
        "livenessProbe": "/api/backpressure/health",
        "readinessProbe": "/api/backpressure/ready",
        "startupProbe": "/api/backpressure/health",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"]["path"] == path, probe
        assert probe_port(container, container[probe]) == admin_port, probe


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_prometheus_scrape_annotations(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    resources = built[name]
    annotations = find(resources, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port_of(sidecar_config(resources).listen.admin)


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_resources_match_the_preset(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    resources = built[name]
    budget_mb = sidecar_config(resources).backpressure.max_memory_usage_mb
    limits = sidecar_container(resources)["resources"]["limits"]
    requests = sidecar_container(resources)["resources"]["requests"]
    # The engine's memory budget plus ~50% for the interpreter, buffers and spool I/O.
    assert 1.25 * budget_mb <= mebibytes(limits["memory"]) <= 2 * budget_mb
    assert mebibytes(requests["memory"]) >= budget_mb
    assert cores(requests["cpu"]) <= cores(limits["cpu"])
    if KUSTOMIZATIONS[name] == "production":
        assert (budget_mb, mebibytes(limits["memory"]), cores(limits["cpu"])) == (1024, 1536, 1)


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_termination_grace_covers_the_drain(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    resources = built[name]
    grace_s = sidecar_config(resources).shutdown.grace_ms / 1000
    # The production drain grace is the 25 s default; the pod allows 40 s.
    assert pod_spec(resources)["terminationGracePeriodSeconds"] >= grace_s + 10
    assert SidecarConfig().shutdown.grace_ms == 25_000


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_secrets_come_from_the_secret_as_env(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    resources = built[name]
    env = {e["name"]: e for e in sidecar_container(resources)["env"]}
    assert env["KPI_SIDECAR_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "kpi-sidecar-secrets"
    assert {"KPI_SIDECAR_UPSTREAM_USER", "KPI_SIDECAR_UPSTREAM_PASSWORD"} <= set(env)
    # Every variable is one the sidecar reads.
    assert set(env) <= set(ENV_OVERRIDES)
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values() if "valueFrom" in e}
    secrets = [r for r in resources if r["kind"] == "Secret"]
    if name in ON_PROD:
        assert secrets == []
        assert (
            "kubectl -n kpi-sidecar-prod create secret generic kpi-sidecar-secrets"
            in (REPO_ROOT / "docs" / "deployment.md").read_text()
        )
    else:
        (secret,) = secrets
        assert secret["metadata"]["name"] == "kpi-sidecar-secrets"
        assert secret_keys <= set(secret["stringData"])


def test_prod_runs_two_replicas_with_a_disruption_budget(built: dict[str, list[dict[str, Any]]]) -> None:
    resources = built["overlays/prod"]
    deployment = find(resources, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    budget = find(resources, "PodDisruptionBudget")
    assert (
        budget["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
