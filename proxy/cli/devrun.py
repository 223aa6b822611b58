"""`make run`: start a local nats-server if none answers on the upstream URL, then the sidecar."""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from proxy.cli.ports_file import dev_ports_file
from proxy.config.schema import PRESETS_DIR, load_config

CONFIG = PRESETS_DIR / "development.yaml"


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


def main() -> int:
    config = load_config(CONFIG)
    url = urlsplit(config.upstream.servers[0])
    host, port = url.hostname or "127.0.0.1", url.port or 4222
    if answers(host, port):
        print(f"upstream: nats-server already answers on {host}:{port}")
    else:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        store = tempfile.mkdtemp(prefix="kpi-dev-js-")
        print(f"upstream: starting {binary} -js on {host}:{port} (store {store})")
        server = subprocess.Popen([binary, "-a", host, "-p", str(port), "-js", "-sd", store])
        atexit.register(server.terminate)
    listen = config.listen
    print(f"sidecar: NATS port nats://{listen.nats}  (point your application's NATS URL here)")
    print(f"sidecar: HTTP ingest http://{listen.http}/publish/<subject>")
    print(f"sidecar: admin API http://{listen.admin}/api/backpressure/status, metrics /metrics")
    print(f"sidecar: admin page http://{listen.admin}/  (open it in a browser)")
    ports_file = dev_ports_file()
    print(f"`kpi-sidecar status` and `kpi-sidecar loadtest` find it through {ports_file}.")
    print("Ctrl-C stops it (graceful drain); edit the file or send SIGHUP to reload its configuration.")
    sys.stdout.flush()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "run",
        "--config",
        str(Path(CONFIG)),
        "--ports-file",
        str(ports_file),
    ]
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
