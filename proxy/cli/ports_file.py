"""Where a running sidecar listens, written to a small JSON file once it is ready (`run --ports-file`).

Scripts and tests read it instead of parsing log lines. `make run` writes the development sidecar's to
DEV_PORTS_FILE, which `kpi-sidecar status` and `loadtest` read when no address is given, so that they talk
to the sidecar `make run` started and say so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from proxy.config.schema import PRESETS_DIR

DEV_PORTS_FILE = PRESETS_DIR.parent / ".run" / "sidecar.json"
# Tests (and anyone running several checkouts) point the commands at another file.
PORTS_FILE_ENV = "KPI_SIDECAR_PORTS_FILE"


def dev_ports_file() -> Path:
    """The file `make run` writes and `status` / `loadtest` read."""
    return Path(os.environ.get(PORTS_FILE_ENV) or DEV_PORTS_FILE)


def connect_host(host: str) -> str:
    """The address a local client uses for a listener on `host` (every interface -> loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


def urls(hosts: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    """The URLs of the bound ports: nats://, http:// (ingest), http:// (admin)."""
    schemes = {"nats": "nats", "http": "http", "admin": "http"}
    return {name: f"{schemes[name]}://{connect_host(hosts[name])}:{port}" for name, port in ports.items()}


def write_ports_file(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def remove_ports_file(path: Path, pid: int) -> None:
    """Remove the file if it is still this process's."""
    current = read_ports_file(path, check_alive=False)
    if current is not None and current.get("pid") == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def read_ports_file(path: Path, *, check_alive: bool = True) -> dict[str, Any] | None:
    """The file's content, or None when it is missing, unreadable, or its process is gone."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("urls"), dict):
        return None
    if check_alive:
        try:
            pid = int(data.get("pid", 0))
            if pid <= 0:
                return None
            os.kill(pid, 0)
        except (OSError, ValueError, OverflowError, TypeError):
            return None
    return data
