"""`kpi-sidecar status`: a short human summary of a running sidecar, read from its admin API."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

from proxy.cli.ports_file import dev_ports_file, read_ports_file

TIMEOUT_S = 5.0
# The admin port of a sidecar in a pod or container (listen.admin's default).
DEFAULT_ADMIN = "http://127.0.0.1:3000"


def dev_sidecar() -> tuple[dict[str, Any], str] | None:
    """The ports file of the sidecar `make run` started, and a phrase saying so (None when none runs)."""
    path = dev_ports_file()
    state = read_ports_file(path)
    if state is None:
        return None
    return state, f"the sidecar `make run` started (pid {state.get('pid')}, {path})"


def resolve_admin(given: str | None) -> tuple[str, str | None]:
    """The admin URL to talk to and, when it was not given, which sidecar that is."""
    if given:
        return normalize_admin_url(given), None
    found = dev_sidecar()
    if found is not None and found[0]["urls"].get("admin"):
        return found[0]["urls"]["admin"], found[1]
    return DEFAULT_ADMIN, "the default admin address (no --admin given, no sidecar started by `make run`)"


def normalize_admin_url(url: str) -> str:
    """`127.0.0.1:3000` -> `http://127.0.0.1:3000`; no trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def fetch_json(url: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """GET a JSON envelope; an HTTP error with an envelope body is returned as that envelope."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return json.loads(body)
        except ValueError:
            raise OSError(f"HTTP {err.code} {err.reason}") from err


def _bytes(n: float) -> str:
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def format_status(admin: str, status: dict[str, Any], health: dict[str, Any] | None) -> str:
    """The summary lines for a /status body (and the /health body when available)."""
    g = status.get
    state = (health or {}).get("status", "unknown").upper()
    queue = g("currentQueueSize", 0)
    queue_max = g("maxQueueSize") or 0
    queue_pct = queue * 100.0 / queue_max if queue_max else 0.0
    drops = g("droppedByReason") or {}
    drop_text = ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items()))
    upstream = "connected" if g("upstreamConnected") else "DISCONNECTED"
    if g("upstreamStalled"):
        upstream += ", STALLED (backed up past upstream.flowControlMs: the engine queues)"
    elif g("flowPausedClients"):
        upstream += f", backed up: {g('flowPausedClients')} application(s) paused by flow control"
    lines = [
        f"kpi-sidecar at {admin}: {state} (level {g('degradationLevel', '?')}, load "
        f"{g('loadPercent', 0.0):.0f}% from {g('dominantSignal', '?')})",
        f"  upstream   {upstream}",
        f"  queue      {queue} / {queue_max} ({queue_pct:.0f}%), {_bytes(g('queuedBytes', 0))}, "
        f"oldest {g('oldestQueuedAgeSeconds', 0.0):.1f} s",
        f"  memory     {g('currentMemoryMB', 0.0):.1f} MB   cpu {g('currentCpuPercent', 0.0):.1f} %   "
        f"incoming {g('currentPublishRate', 0.0):.1f} msg/s",
        f"  shedding   sampling rate {g('samplingRate', 1.0) * 100:.0f} %   batch size {g('batchSize', 1)}",
        f"  messages   received {g('receivedMessages', 0)}  forwarded {g('forwardedMessages', 0)}  "
        f"dropped {g('droppedMessages', 0)}" + (f" ({drop_text})" if drop_text else ""),
        f"             sampled out {g('sampledMessages', 0)}  spooled {g('spooledMessages', 0)}",
        f"  breakers   {g('openCircuitBreakers', 0)} open",
        f"  spool      {g('spoolMessages', 0)} messages, {_bytes(g('spoolBytes', 0))}",
        f"  clients    {g('clients', 0)}   uptime {g('uptimeSeconds', 0.0):.0f} s",
    ]
    return "\n".join(lines)


def fetch_api(
    command: str, admin_url: str | None, path: str, err: TextIO, hint: str = ""
) -> tuple[str, dict[str, Any]] | None:
    """GET `path` of the admin API for `kpi-sidecar <command>`: (admin URL, the answer's data), or None
    after a clear message on `err` when the API cannot be reached or answers an error.

    Without `admin_url`, the sidecar `make run` started (its ports file), else DEFAULT_ADMIN; which one is
    said on `err`."""
    admin, which = resolve_admin(admin_url)
    if which is not None:
        print(f"kpi-sidecar {command}: {admin}, {which}", file=err)
    url = f"{admin}{path}"
    try:
        body = fetch_json(url)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        print(f"kpi-sidecar {command}: cannot reach the admin API at {admin}: {reason}", file=err)
        if hint:
            print(hint, file=err)
        return None
    if not body.get("success"):
        error = body.get("error") or {}
        print(f"kpi-sidecar {command}: {url} answered an error: {error.get('message', body)}", file=err)
        return None
    return admin, body.get("data") or {}


def print_status(admin_url: str | None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the summary; 1 with a clear message when the admin API cannot be reached or answers an error."""
    out = out or sys.stdout
    found = fetch_api(
        "status",
        admin_url,
        "/api/backpressure/status",
        err or sys.stderr,
        "  (is the sidecar running? pass --admin http://HOST:PORT for another address)",
    )
    if found is None:
        return 1
    admin, data = found
    try:
        health = fetch_json(f"{admin}/api/backpressure/health").get("data")
    except (OSError, ValueError):
        health = None
    print(format_status(admin, data, health), file=out)
    return 0
