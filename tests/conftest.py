"""Shared fixtures: real nats-server processes and real sidecar processes on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli.main import spawn_run

ROOT = Path(__file__).resolve().parent.parent
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def settle(nc: Any) -> None:
    """Make a nats-py connection's earlier SUB/UNSUBs live on the server: nats-py writes a flush's PING
    ahead of commands still in its own buffer, so the first flush can overtake them (against nats-server
    too); the second flush's PING follows them on the wire."""
    await nc.flush()
    await nc.flush()


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll (every 20 ms) until predicate() is true; AssertionError if it is not within timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class NatsServer:
    """A real nats-server process on a free port; can be killed, stopped and restarted on the same port."""

    def __init__(self, workdir: Path, *, jetstream: bool = False, extra_conf: str = "") -> None:
        self.port = free_port()
        self.monitor_port = free_port()
        self.workdir = workdir
        self.jetstream = jetstream
        self.conf = workdir / f"nats-{self.port}.conf"
        lines = [f"listen: 127.0.0.1:{self.port}", f"http: 127.0.0.1:{self.monitor_port}"]
        if jetstream:
            lines.append(f'jetstream {{ store_dir: "{workdir / f"js-{self.port}"}" }}')
        lines.append(extra_conf)
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.workdir / f"nats-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_for_port(self.port)

    def connz(self) -> dict[str, Any]:
        """The server's /connz monitoring page, with each connection's subscriptions."""
        url = f"http://127.0.0.1:{self.monitor_port}/connz?subs=1"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def subscriptions_of(self, name: str) -> list[str]:
        """Subjects subscribed by the connection(s) named `name` (the sidecar's upstream)."""
        subjects: list[str] = []
        for conn in self.connz().get("connections", []):
            if conn.get("name") == name:
                subjects.extend(conn.get("subscriptions_list") or [])
        return subjects

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel reports the process stopped (the signal is asynchronous:
        without the wait, the server may still answer a PING sent right after)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self.proc.pid}/stat")
        deadline = time.monotonic() + 5
        while stat.read_text().rpartition(")")[2].split()[0] != "T":
            assert time.monotonic() < deadline, "nats-server did not stop"
            time.sleep(0.001)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kpi-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nats_server(workdir: Path) -> Iterator[NatsServer]:
    server = NatsServer(workdir, jetstream=True)
    yield server
    server.stop()


@pytest.fixture
def nats_factory(workdir: Path) -> Iterator[Any]:
    servers: list[NatsServer] = []

    def make(**kwargs: Any) -> NatsServer:
        server = NatsServer(workdir, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class SidecarProcess:
    """`python -m proxy run` as a real subprocess, with its ports read from its --ports-file."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.args = args
        self.workdir = workdir
        self.config_path = workdir / f"sidecar-{id(self)}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"sidecar-{id(self)}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.start()

    def start(self, timeout: float = 20.0) -> None:
        self.proc, self.ports = spawn_run(
            self.config_path, self.log_path, env=self.env, cwd=ROOT, timeout=timeout, args=self.args
        )

    @property
    def ports_file(self) -> Path:
        """Where `run --ports-file` wrote this sidecar's ports and URLs (see proxy.cli.spawn_run)."""
        return self.log_path.with_suffix(".ports.json")

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports['nats']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.admin_url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON body to the admin API (no token: the tests' admin port is on loopback)."""
        req = urllib.request.Request(
            self.admin_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        return self.get("/api/backpressure/status")["data"]

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample on /metrics."""
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def terminate(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text()


def open_breaker(proc: SidecarProcess, subject: str) -> None:
    """Open the subject's circuit breaker by hand: the sidecar then refuses its requests with a 503."""
    proc.post("/api/backpressure/circuit-breaker", {"subject": subject, "action": "open"})


def sidecar_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A test configuration: every port free-allocated, the given upstream, spool in the workdir."""
    config: dict[str, Any] = {
        "upstream": {"servers": [upstream_url], "pingIntervalMs": 1000, "reconnectWaitMs": 50},
        "listen": {"nats": "127.0.0.1:0", "http": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "backpressure": {"maxPublishRate": 100000, "maxQueueSize": 100000},
        "shutdown": {"graceMs": 5000},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def sidecar_factory(workdir: Path) -> Iterator[Any]:
    procs: list[SidecarProcess] = []

    def make(config: dict[str, Any], **kwargs: Any) -> SidecarProcess:
        config.setdefault("spool", {"path": str(workdir / f"spool-{len(procs)}")})
        proc = SidecarProcess(workdir, config, **kwargs)
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.kill()


@pytest.fixture
def sidecar(nats_server: NatsServer, sidecar_factory: Any) -> SidecarProcess:
    """A sidecar in front of a fresh JetStream-enabled nats-server, generous limits (level none)."""
    proc = sidecar_factory(sidecar_config(nats_server.url))
    proc.upstream = nats_server  # type: ignore[attr-defined]
    return proc
