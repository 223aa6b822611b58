"""The processes a benchmark run measures: a nats-server hub, a nats-server leaf node, the sidecar."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from proxy.cli.main import spawn_run

ROOT = Path(__file__).resolve().parent.parent
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class NatsServer:
    """A nats-server process on free ports, with its monitoring port."""

    def __init__(self, workdir: Path, name: str, extra_conf: str = "") -> None:
        self.name = name
        self.port = free_port()
        self.monitor_port = free_port()
        self.conf = workdir / f"{name}.conf"
        self.conf.write_text(
            f"server_name: {name}\nlisten: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.monitor_port}\n"
            f"{extra_conf}\n"
        )
        self.log = workdir / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.port)
        wait_for_port(self.monitor_port)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"nats://{self.addr}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def monitor(self, path: str) -> Any:
        return http_json(f"http://127.0.0.1:{self.monitor_port}{path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Sidecar:
    """`python -m proxy run --config FILE` as a subprocess; ports from its --ports-file."""

    def __init__(self, workdir: Path, config: dict[str, Any], root: Path = ROOT) -> None:
        self.config_path = workdir / "sidecar.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "sidecar.log"
        with open(self.log, "a") as log:
            log.write(f"--- sidecar started {time.strftime('%H:%M:%S')} ---\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)}
        self.proc, self.ports = spawn_run(self.config_path, self.log, env=env, cwd=root, timeout=30)
        # Keep draining stdout so that the sidecar never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        if self.proc.stdout is None:
            return  # spawn_run sent the output to the log file: nothing to drain
        for _ in self.proc.stdout:
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.ports['nats']}"

    @property
    def url(self) -> str:
        return f"nats://{self.addr}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def admin(self, path: str) -> Any:
        return http_json(f"http://127.0.0.1:{self.ports['admin']}{path}")

    def level(self) -> dict[str, Any]:
        """Degradation level (and load, when the status endpoint exists) as the admin API reports it."""
        try:
            data = self.admin("/api/backpressure/status")["data"]
            return {
                "level": data.get("level") or data.get("degradationLevel"),
                "load": data.get("loadPercent"),
                "signal": data.get("dominantSignal"),
            }
        except Exception:
            data = self.admin("/api/backpressure/health")["data"]
            return {"level": data.get("degradationLevel"), "load": None, "signal": None}

    def level_changes(self) -> list[str]:
        """The sidecar's own log lines for level transitions."""
        return [line.strip() for line in self.log.read_text().splitlines() if "degradation level" in line]

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def sidecar_config(upstream_url: str, workdir: Path) -> dict[str, Any]:
    """All policies on, thresholds set so that the benchmark's own load keeps the level at none.

    maxPublishRate and maxQueueSize are far above anything the benchmark produces. maxCpuUsagePercent is
    1000 (% of one core, the maximum allowed): the sidecar is single-threaded and saturates one core on
    purpose during the throughput runs, and that must not escalate the level and start shedding, which
    would measure the policies instead of the data path.
    """
    return {
        "upstream": {"servers": [upstream_url], "name": "kpi-sidecar-bench"},
        "listen": {"nats": "127.0.0.1:0", "http": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "backpressure": {
            "maxPublishRate": 10_000_000,
            "maxQueueSize": 1_000_000,
            "maxCpuUsagePercent": 1000,
            "enableCircuitBreaker": True,
            "enableSampling": True,
            "enablePrioritization": True,
            "enableBatching": True,
        },
        # Rules that the benchmark subjects do not match: every message is classified through them
        # (but bench.js.>, workload (j): critical messages delivered with JetStream PubAcks).
        "policies": [
            {"subject": "bench.js.>", "priority": "critical", "delivery": "jetstream"},
            {"subject": "kpi.payment.>", "priority": "critical"},
            {"subject": "kpi.marketing.>", "priority": "low"},
            {"subject": "kpi.*.debug", "priority": "low"},
        ],
        "spool": {"path": str(workdir / "spool")},
        "shutdown": {"graceMs": 2000},
    }


class Topology:
    """Hub, leaf node (remote to the hub) and sidecar (upstream the hub), started and torn down together."""

    def __init__(self, workdir: Path, sidecar_root: Path = ROOT) -> None:
        self.workdir = workdir
        self.sidecar_root = sidecar_root
        leaf_port = free_port()
        # JetStream on the hub for workload (j); no stream exists outside that workload.
        self.hub = NatsServer(
            workdir,
            "hub",
            f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n"
            f'jetstream {{ store_dir: "{workdir / "hub-js"}", max_memory_store: 1G, max_file_store: 4G }}',
        )
        self.leaf: NatsServer | None = None
        self.sidecar: Sidecar | None = None
        try:
            self.leaf = NatsServer(
                workdir,
                "leaf",
                f'leafnodes {{ remotes [ {{ url: "nats-leaf://127.0.0.1:{leaf_port}" }} ] }}',
            )
            self._wait_leaf_connected()
            self.sidecar = Sidecar(workdir, sidecar_config(self.hub.url, workdir), sidecar_root)
        except BaseException:
            self.stop()
            raise

    def restart_sidecar(self, backpressure: dict[str, Any] | None = None) -> Sidecar:
        """A fresh sidecar process, e.g. to measure memory without earlier peaks; `backpressure` overrides
        some of the configuration's backpressure settings (the shedding workloads)."""
        if self.sidecar is not None:
            self.sidecar.stop()
        config = sidecar_config(self.hub.url, self.workdir)
        if backpressure:
            config["backpressure"].update(backpressure)
        self.sidecar = Sidecar(self.workdir, config, self.sidecar_root)
        return self.sidecar

    def _wait_leaf_connected(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.hub.monitor("/leafz").get("leafnodes", 0) >= 1:
                return
            time.sleep(0.1)
        raise TimeoutError("the leaf node did not connect to the hub")

    def addr(self, path: str) -> str:
        """Where a client of `path` (direct, leaf, sidecar) connects."""
        if path == "direct":
            return self.hub.addr
        if path == "leaf":
            assert self.leaf is not None
            return self.leaf.addr
        assert self.sidecar is not None
        return self.sidecar.addr

    def stop(self) -> None:
        for proc in (self.sidecar, self.leaf, self.hub):
            if proc is not None:
                proc.stop()
