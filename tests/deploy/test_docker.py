"""docker/Dockerfile, read statically (no Docker engine here), and the local stack of docker/compose.yaml."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import nats
import yaml
from nats.aio.msg import Msg

from proxy.cli.main import build_parser
from proxy.config import schema as sidecar_config_module
from proxy.config.schema import build_config, load_config
from tests.conftest import settle
from tests.deploy.metric_names import REPO_ROOT

DOCKER_DIR = REPO_ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE = DOCKER_DIR / "compose.yaml"
CONFIG_PATH = "/etc/kpi-sidecar/config.yaml"
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|python3-dev|libc6-dev)\b")


# ---- a small Dockerfile reader: instructions, stages, and what each stage's filesystem holds ----


@dataclass
class Instruction:
    keyword: str
    flags: list[str]
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must use the exec (JSON) form"
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def read_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        words = rest.split()
        flags = (
            [w for w in words if w.startswith("--")]
            if keyword in ("COPY", "ADD", "FROM", "HEALTHCHECK")
            else []
        )
        body = " ".join(w for w in words if w not in flags) if flags else rest.strip()
        if keyword == "FROM":
            image, *alias = body.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], image)
            stages.append(Stage(image, alias[1] if alias else None))
        elif keyword == "ARG" and not stages:
            name, _, default = body.partition("=")
            args[name] = default
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, flags, body))
    return args, stages


def stage_paths(stages: list[Stage], index: int) -> dict[str, str]:
    """Absolute path in a stage's image -> the build-context path COPY put there (following --from)."""
    stage = stages[index]
    paths: dict[str, str] = {}
    workdir = PurePosixPath("/")
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.args
        if instruction.keyword != "COPY":
            continue
        *sources, dest = instruction.args.split()
        target = workdir / dest
        source_stage = next((f.split("=", 1)[1] for f in instruction.flags if f.startswith("--from=")), None)
        if source_stage is None:
            for source in sources:
                into = target / PurePosixPath(source).name if dest.endswith("/") else target
                paths[str(into)] = source
        else:
            (from_index,) = [i for i, s in enumerate(stages) if s.name == source_stage]
            (source,) = sources
            for path, origin in stage_paths(stages, from_index).items():
                if path == source or path.startswith(source.rstrip("/") + "/"):
                    paths[str(target / PurePosixPath(path).relative_to(source))] = origin
    return paths


def final_stage() -> Stage:
    return read_dockerfile()[1][-1]


# ---- Dockerfile ----


def test_multi_stage_on_python_slim() -> None:
    args, stages = read_dockerfile()
    assert len(stages) >= 2
    assert all(stage.base == "python:3.11-slim" for stage in stages)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert len({stage.name for stage in stages}) == len(stages)


def test_final_stage_user_is_not_root() -> None:
    user = final_stage().last("USER")
    assert user is not None, "the final stage sets no USER: the image would run as root"
    name = user.args.split(":")[0]
    assert name not in ("root", "0", "")


def test_final_stage_installs_no_build_tools() -> None:
    stages = read_dockerfile()[1]
    for run in stages[-1].all("RUN"):
        assert not BUILD_TOOLS.search(run.args), run.args
        assert "pip install" not in run.args, "the final stage copies a built virtualenv instead"
    # The build tools are in an earlier stage, which the final stage copies from.
    assert any(BUILD_TOOLS.search(run.args) for stage in stages[:-1] for run in stage.all("RUN"))
    assert any(f.startswith("--from=") for copy in stages[-1].all("COPY") for f in copy.flags)


def test_entrypoint_and_default_config_path() -> None:
    stage = final_stage()
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert entrypoint.exec_form() == ["kpi-sidecar", "run"]
    assert cmd.exec_form() == ["--config", CONFIG_PATH]
    # The console script exists and its CLI accepts exactly that command line.
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kpi-sidecar"] == "proxy.cli.main:main"
    args = build_parser().parse_args(entrypoint.exec_form()[1:] + cmd.exec_form())
    assert (args.command, args.config) == ("run", CONFIG_PATH)


def test_image_holds_the_code_and_the_presets_in_app() -> None:
    stages = read_dockerfile()[1]
    paths = stage_paths(stages, len(stages) - 1)
    assert paths.get("/app/proxy") == "proxy"
    assert paths.get("/app/policies") == "policies"
    assert paths.get("/app/conf") == "conf"
    # proxy/config/schema.py looks for presets next to the proxy package: /app/proxy -> /app/conf.
    package_dir = Path(sidecar_config_module.__file__).resolve().parents[1]
    presets_dir = sidecar_config_module.PRESETS_DIR
    assert presets_dir == package_dir.parent / "conf"
    for preset in sidecar_config_module.PRESET_NAMES:
        assert (REPO_ROOT / "conf" / f"{preset}.yaml").is_file()
    assert paths.get("/app/demo/demo_publisher.py") == "docker/demo_publisher.py"


def test_copied_sources_exist_and_pass_the_dockerignore() -> None:
    ignore = [line.strip() for line in (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()]
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "**" in ignore, "the dockerignore is an allow-list"
    for stage in read_dockerfile()[1]:
        for copy in stage.all("COPY"):
            if any(f.startswith("--from=") for f in copy.flags):
                continue
            for source in copy.args.split()[:-1]:
                if source.endswith("*"):  # optional file (README.md*)
                    continue
                assert (REPO_ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"


def test_ports_volume_and_healthcheck() -> None:
    stage = final_stage()
    exposed = {port for expose in stage.all("EXPOSE") for port in expose.args.split()}
    assert exposed == {"4222", "8080", "3000"}
    volume = stage.last("VOLUME")
    assert volume is not None and volume.exec_form() == ["/var/lib/kpi-sidecar/spool"]
    healthcheck = stage.last("HEALTHCHECK")
    assert healthcheck is not None and "http://127.0.0.1:3000/api/backpressure/health" in healthcheck.args


# ---- docker/compose.yaml ----


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's relative bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (DOCKER_DIR / source).resolve()
    return mounts


def compose_sidecar_config_file() -> Path:
    return bind_mounts(compose()["services"]["kpi-sidecar"])[CONFIG_PATH]


def test_compose_services() -> None:
    services = compose()["services"]
    assert set(services) == {"nats", "kpi-sidecar", "demo-publisher", "prometheus", "grafana"}
    assert "--jetstream" in services["nats"]["command"] or "-js" in services["nats"]["command"]
    named = set(compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER_DIR / source).exists(), f"bind mount source {source} does not exist"
            else:
                assert source in named, f"volume {source} is not declared"
        for dependency in service.get("depends_on", []):
            assert dependency in services


def test_compose_builds_the_sidecar_from_the_repository_root() -> None:
    sidecar = compose()["services"]["kpi-sidecar"]
    context = (DOCKER_DIR / sidecar["build"]["context"]).resolve()
    assert context == REPO_ROOT
    assert (context / sidecar["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert compose()["services"]["demo-publisher"]["image"] == sidecar["image"]


def test_compose_sidecar_config() -> None:
    config = load_config(compose_sidecar_config_file())
    assert config.upstream.servers == ["nats://nats:4222"]
    sidecar = compose()["services"]["kpi-sidecar"]
    assert config.spool.path in {v.split(":")[1] for v in sidecar["volumes"]}
    grace = re.fullmatch(r"(\d+)s", sidecar["stop_grace_period"])
    assert grace and int(grace[1]) >= config.shutdown.grace_ms / 1000 + 10
    assert "KPI_SIDECAR_ADMIN_TOKEN" in sidecar["environment"]


def test_demo_publisher_uses_the_sidecar_like_a_pod() -> None:
    services = compose()["services"]
    publisher = services["demo-publisher"]
    config = build_config(yaml.safe_load(compose_sidecar_config_file().read_text()), env={})
    assert publisher["network_mode"] == "service:kpi-sidecar"
    assert publisher["environment"]["NATS_URL"] == f"nats://127.0.0.1:{config.listen.nats.rpartition(':')[2]}"
    assert publisher["entrypoint"] == ["python", "/app/demo/demo_publisher.py"]


def test_compose_prometheus_scrapes_the_sidecar_and_loads_the_rules() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = bind_mounts(prometheus)
    assert mounts["/etc/prometheus/prometheus.yml"] == DOCKER_DIR / "prometheus.yml"
    scrape = yaml.safe_load((DOCKER_DIR / "prometheus.yml").read_text())
    for rule_file in scrape["rule_files"]:
        assert (
            mounts[str(PurePosixPath("/etc/prometheus") / rule_file)]
            == REPO_ROOT / "prometheus" / "alerts.yaml"
        )
    admin_port = load_config(compose_sidecar_config_file()).listen.admin.rpartition(":")[2]
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert f"kpi-sidecar:{admin_port}" in targets


def test_compose_grafana_provisions_the_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == REPO_ROOT / "grafana" / "provisioning"
    (provider_file,) = (provisioning / "dashboards").glob("*.yaml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    assert mounts[provider["options"]["path"]] == REPO_ROOT / "grafana" / "dashboards"
    (datasource_file,) = (provisioning / "datasources").glob("*.yaml")
    (datasource,) = yaml.safe_load(datasource_file.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[provider["options"]["path"]] / PurePosixPath(home).name).is_file()


# ---- docker/demo_publisher.py against a real nats-server ----


def load_demo_publisher() -> Any:
    spec = importlib.util.spec_from_file_location("demo_publisher", DOCKER_DIR / "demo_publisher.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_demo_publisher_publishes_kpi_messages_with_mixed_priorities(nats_server: Any) -> None:
    demo = load_demo_publisher()
    received: list[Msg] = []
    count = 300

    all_received = asyncio.Event()

    async def collect(msg: Msg) -> None:
        received.append(msg)
        if len(received) == count:
            all_received.set()

    nc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe("kpi.>", cb=collect)
        await settle(nc)
        args = demo.build_parser().parse_args(
            ["--url", nats_server.url, "--count", str(count), "--rate", "2000"]
        )
        assert await demo.publish(args, asyncio.Event(), random.Random(7)) == count
        await asyncio.wait_for(all_received.wait(), timeout=5)
    finally:
        await nc.close()
    assert len(received) == count
    # Explicit KPI-Priority headers of every level, and messages without one (the policies decide).
    assert {(msg.headers or {}).get("KPI-Priority") for msg in received} == {
        "critical",
        "high",
        "medium",
        "low",
        None,
    }
    assert {msg.subject.split(".")[1] for msg in received} == {
        "payment",
        "marketing",
        "analytics",
        "onboarding",
    }
    assert all(json.loads(msg.data)["kpi"] for msg in received)
