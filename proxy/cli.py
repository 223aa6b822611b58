"""The `kpi-sidecar` command: run, check-config, status, loadtest."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from proxy import nats_protocol
from proxy.config import PRESET_NAMES, load_config, redacted
from proxy.errors import ConfigError

log = logging.getLogger("proxy")
# aiohttp waits this long for open HTTP connections at cleanup: idle keep-alive ones must not hold SIGTERM.
RUNNER_SHUTDOWN_TIMEOUT_S = 2.0


async def serve(config_path: str | None, preset: str | None) -> int:
    """Run the sidecar until SIGTERM/SIGINT, then drain and return the exit code."""
    from proxy.admin_api import create_admin_app
    from proxy.metrics import new_registry
    from proxy.sidecar import Sidecar, split_host_port

    config = load_config(config_path, preset=preset)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sidecar = Sidecar(config)
    await sidecar.start()
    runners: list[web.AppRunner] = []
    admin_host, admin_port = split_host_port(config.listen.admin)
    # One registry per process (the process collector included), handed to the admin app.
    registry = new_registry()
    runner = web.AppRunner(
        create_admin_app(sidecar, registry),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, admin_host, admin_port, reuse_address=True)
    await site.start()
    runners.append(runner)
    ports = {"nats": sidecar.nats_port, "admin": _bound_port(runner)}
    if config.listen.http:
        from proxy.http_ingest import create_ingest_app

        http_host, http_port = split_host_port(config.listen.http)
        ingest = web.AppRunner(
            create_ingest_app(sidecar),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT_S,
        )
        await ingest.setup()
        await web.TCPSite(ingest, http_host, http_port, reuse_address=True).start()
        runners.append(ingest)
        ports["http"] = _bound_port(ingest)
    sidecar.bound_ports = ports
    # Everything built so far lives as long as the process: keep it out of every GC pass (the profile
    # showed collections triggered on the publish path walking these objects).
    gc.collect()
    gc.freeze()
    log.info(
        "kpi-sidecar ready: %s (parser: %s)", ports, "C scanner" if nats_protocol.SPEEDUPS else "pure Python"
    )
    # One machine-readable line so scripts and tests learn the ports (0 in the config means "any free"),
    # after the log line: whoever reads the ports finds the log complete.
    print(json.dumps({"event": "ready", "ports": ports}), flush=True)
    await stop.wait()
    log.info("signal received, shutting down")
    for ingest_runner in runners[1:]:
        await ingest_runner.cleanup()
    await sidecar.shutdown()
    await runner.cleanup()
    return 0


def wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    """The ports a `kpi-sidecar run` child announces on its stdout "ready" line ({} if none in time)."""
    ports: dict[str, int] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "ready":
                ports.update(event["ports"])
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return ports


def spawn_run(
    config_path: Path, log_path: Path, *, env: dict[str, str], cwd: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start `python -m proxy run --config config_path` (stderr appended to log_path) and wait for its
    ports; RuntimeError with the log's tail if it does not come up. For the test fixture and the bench."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=str(cwd),
        )
    ports = wait_ready(proc, timeout)
    if not ports:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"sidecar did not start; log:\n{log_path.read_text()[-4000:]}")
    return proc, ports


def _bound_port(runner: web.AppRunner) -> int:
    server = runner.addresses[0]
    return int(server[1])


def cmd_run(args: argparse.Namespace) -> int:
    # Validate before starting anything, so that a bad file never leaves half a sidecar running.
    load_config(args.config, preset=args.preset)
    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            return uvloop.run(serve(args.config, args.preset))
        return asyncio.run(serve(args.config, args.preset))
    except OSError as err:
        # A port already taken, an unwritable spool directory: one line, not a traceback.
        print(f"kpi-sidecar: error: {err}", file=sys.stderr)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file, preset=args.preset)
    print(json.dumps(redacted(config), indent=2, sort_keys=False))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from proxy.status_cli import print_status

    return print_status(args.admin)


def cmd_loadtest(args: argparse.Namespace) -> int:
    from proxy.loadtest_cli import run_loadtest

    return run_loadtest(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpi-sidecar", description="Backpressure proxy for NATS")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("--config", help="YAML configuration file")
    run.add_argument("--preset", choices=PRESET_NAMES, help="preset to start from (conf/NAME.yaml)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a configuration file and print it")
    check.add_argument("file")
    check.add_argument("--preset", choices=PRESET_NAMES)
    check.set_defaults(func=cmd_check_config)
    status = sub.add_parser("status", help="print a short summary of a running sidecar")
    status.add_argument("--admin", default="http://127.0.0.1:3000", help="admin base URL")
    status.set_defaults(func=cmd_status)
    load = sub.add_parser("loadtest", help="drive load through a NATS port like an application")
    load.add_argument("--url", default="nats://127.0.0.1:4222")
    load.add_argument("--rate", type=float, default=1000, help="messages per second")
    load.add_argument("--duration", type=float, default=10, help="seconds (0 with --soak: until Ctrl-C)")
    load.add_argument("--size", type=int, default=128, help="payload bytes")
    load.add_argument("--subjects", default="test.load.a,test.load.b", help="comma-separated subjects")
    load.add_argument("--priority", choices=["low", "medium", "high", "critical"], default=None)
    load.add_argument("--report-every", type=float, default=1.0, help="seconds between progress lines")
    load.add_argument("--json", action="store_true", help="print the summary as JSON")
    load.add_argument("--admin", help="sidecar admin base URL: report its memory (currentMemoryMB)")
    load.add_argument(
        "--soak", action="store_true", help="long run: per-interval latency and memory, and their trend"
    )
    load.add_argument(
        "--min-success-rate", type=float, default=0.0, help="exit 1 when fewer messages (percent) come back"
    )
    load.set_defaults(func=cmd_loadtest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        for line in err.errors:
            print(f"kpi-sidecar: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
