"""The `kpi-sidecar` command: run, check-config, status, fleet, loadtest."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from proxy import __version__
from proxy.cli.log_format import LOG_FORMATS, configure_logging
from proxy.cli.ports_file import read_ports_file, remove_ports_file, urls, write_ports_file
from proxy.config.schema import PRESET_NAMES, load_config, load_layers, redacted
from proxy.errors import ConfigError
from proxy.nats import protocol as nats_protocol

log = logging.getLogger("proxy")
# aiohttp waits this long for open HTTP connections at cleanup: idle keep-alive ones must not hold SIGTERM.
RUNNER_SHUTDOWN_TIMEOUT_S = 2.0


async def serve(config_path: str | None, preset: str | None, ports_file: str | None = None) -> int:
    """Run the sidecar until SIGTERM/SIGINT, then drain and return the exit code. SIGHUP reloads."""
    from proxy.admin.api import create_admin_app
    from proxy.admin.metrics import new_registry
    from proxy.config.runtime import RuntimeConfig
    from proxy.ports.listener import split_host_port
    from proxy.sidecar import Sidecar

    loaded = load_layers(config_path, preset=preset)
    config = loaded.config
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sidecar = Sidecar(config)
    runtime = RuntimeConfig(sidecar, loaded, path=config_path, preset=preset)
    # Before anything slow: SIGHUP's default action would end the process.
    loop.add_signal_handler(signal.SIGHUP, runtime.reload, "SIGHUP")
    await sidecar.start()
    runners: list[web.AppRunner] = []
    admin_host, admin_port = split_host_port(config.listen.admin)
    # One registry per process (the process collector included), handed to the admin app.
    registry = new_registry()
    runner = web.AppRunner(
        create_admin_app(sidecar, registry, runtime),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, admin_host, admin_port, reuse_address=True)
    await site.start()
    runners.append(runner)
    ports = {"nats": sidecar.nats_port, "admin": _bound_port(runner)}
    hosts = {"nats": split_host_port(config.listen.nats)[0], "admin": admin_host}
    if config.listen.http:
        from proxy.ports.http_ingest import create_ingest_app

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
        hosts["http"] = http_host
    sidecar.bound_ports = ports
    warn_open_admin(admin_host, config.admin.token)
    # Everything built so far lives as long as the process: keep it out of every GC pass (the profile
    # showed collections triggered on the publish path walking these objects).
    gc.collect()
    gc.freeze()
    addresses = urls(hosts, ports)  # type: ignore[arg-type]
    log.info(
        "ready: NATS %s, HTTP ingest %s, admin %s (parser: %s)",
        addresses["nats"],
        addresses.get("http", "off"),
        addresses["admin"],
        "C scanner" if nats_protocol.SPEEDUPS else "pure Python",
        extra={"event": "ready", "ports": ports, "urls": addresses},
    )
    # After the log line: whoever learns the ports from the file finds the log complete.
    if ports_file is not None:
        write_ports_file(
            Path(ports_file),
            {"pid": os.getpid(), "ports": ports, "urls": addresses, "config": config_path},
        )
    watcher = loop.create_task(runtime.watch(), name="config-watch") if config_path is not None else None
    await stop.wait()
    log.info("signal received, shutting down")
    loop.remove_signal_handler(signal.SIGHUP)
    if watcher is not None:
        watcher.cancel()
    for ingest_runner in runners[1:]:
        await ingest_runner.cleanup()
    await sidecar.shutdown()
    await runner.cleanup()
    if ports_file is not None:
        remove_ports_file(Path(ports_file), os.getpid())
    return 0


def warn_open_admin(host: str, token: str | None) -> None:
    """One WARNING when the admin port is reachable from other machines and no token protects it."""
    if token:
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning(
            "the admin API listens on %s without a token: anyone who reaches the port reads status, "
            "configuration and metrics, and changes are refused except from loopback clients; set "
            "admin.token (or KPI_SIDECAR_ADMIN_TOKEN), or listen on 127.0.0.1",
            host or "every interface",
        )


def spawn_run(
    config_path: Path,
    log_path: Path,
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    args: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start `python -m proxy run --config config_path [args]` (output appended to log_path), wait for the
    ports it writes to its --ports-file; RuntimeError with the log's tail if it does not come up.
    For the test fixture and the bench."""
    ports_path = log_path.with_suffix(".ports.json")
    ports_path.unlink(missing_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy",
                "run",
                "--config",
                str(config_path),
                "--ports-file",
                str(ports_path),
                *args,
            ],
            stdout=log_file,
            stderr=log_file,
            env=env,
            cwd=str(cwd),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        data = read_ports_file(ports_path)
        if data is not None and data.get("pid") == proc.pid:
            return proc, dict(data["ports"])
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"sidecar did not start; log:\n{log_path.read_text()[-4000:]}")


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
    main_coro = serve(args.config, args.preset, args.ports_file)
    try:
        if uvloop is not None:
            return uvloop.run(main_coro)
        return asyncio.run(main_coro)
    except OSError as err:
        # A port already taken, an unwritable spool directory: one line, not a traceback.
        log.error("cannot start: %s", err)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file, preset=args.preset)
    print(json.dumps(redacted(config), indent=2, sort_keys=False))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from proxy.cli.status import print_status

    return print_status(args.admin)


def cmd_fleet(args: argparse.Namespace) -> int:
    from proxy.cli.fleet import print_fleet

    return print_fleet(args.admin)


def cmd_loadtest(args: argparse.Namespace) -> int:
    from proxy.cli.loadtest import run_loadtest

    return run_loadtest(args)


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--log-level and --log-format, accepted before and after the command (`kpi-sidecar run --log-...`)."""
    suppress = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        **({"default": "INFO"} if defaults else suppress),
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="plain lines (default) or one JSON object per line, for log collectors",
        **({"default": "plain"} if defaults else suppress),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpi-sidecar", description="Backpressure proxy for NATS")
    parser.add_argument("--version", action="version", version=f"kpi-sidecar {__version__}")
    _common_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the sidecar", parents=[common])
    run.add_argument("--config", help="YAML configuration file (re-read on SIGHUP and when it changes)")
    run.add_argument("--preset", choices=PRESET_NAMES, help="preset to start from (conf/NAME.yaml)")
    run.add_argument(
        "--ports-file", help="write the bound ports and URLs there as JSON once ready (removed at exit)"
    )
    run.set_defaults(func=cmd_run)
    check = sub.add_parser(
        "check-config", help="validate a configuration file and print it", parents=[common]
    )
    check.add_argument("file")
    check.add_argument("--preset", choices=PRESET_NAMES)
    check.set_defaults(func=cmd_check_config)
    status = sub.add_parser("status", help="print a short summary of a running sidecar", parents=[common])
    status.add_argument(
        "--admin",
        help="admin base URL (default: the sidecar `make run` started, else http://127.0.0.1:3000)",
    )
    status.set_defaults(func=cmd_status)
    fleet = sub.add_parser(
        "fleet", help="print the fleet a running sidecar sees, as a table", parents=[common]
    )
    fleet.add_argument(
        "--admin",
        help="admin base URL (default: the sidecar `make run` started, else http://127.0.0.1:3000)",
    )
    fleet.set_defaults(func=cmd_fleet)
    load = sub.add_parser(
        "loadtest", help="drive load through a NATS port like an application", parents=[common]
    )
    load.add_argument(
        "--url", help="NATS URL (default: the sidecar `make run` started, else nats://127.0.0.1:4222)"
    )
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
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        for line in err.errors:
            print(f"kpi-sidecar: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
