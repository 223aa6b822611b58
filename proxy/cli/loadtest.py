"""`kpi-sidecar loadtest`: drive load through a NATS port as an application would (nats-py).

One connection publishes at the requested rate, in timed slices; a second connection to the same URL
subscribes to the same subjects and counts what comes back, so "delivered" means published through the
sidecar, forwarded upstream and delivered back by NATS. Latency is from publish call to delivery, both
on this process's time.monotonic(). `--soak` adds per-interval latency and the sidecar's memory
(`--admin URL`, from /api/backpressure/status currentMemoryMB) to each report line, and their trend to
the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from typing import Any, TextIO
from urllib.parse import urlsplit

from proxy.admin.load_test import MAX_CATCH_UP_S, PREFIX, SLICE_S, LatencyReservoir
from proxy.cli.status import dev_sidecar, fetch_json, normalize_admin_url

# A sidecar's NATS port in a pod (listen.nats's default).
DEFAULT_URL = "nats://127.0.0.1:4222"
DRAIN_WAIT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
INTERVAL_SAMPLES = 20_000


class Run:
    """Counters of one load-test run."""

    def __init__(self) -> None:
        self.run_id = secrets.token_bytes(8)
        self.sent = 0
        self.delivered = 0
        self.errors = 0
        self.latency = LatencyReservoir()
        self.interval = LatencyReservoir(INTERVAL_SAMPLES)
        self.reports: list[dict[str, Any]] = []
        self.started = time.monotonic()
        # Set once `expected` messages came back (the drain wait after the last publish).
        self.expected: int | None = None
        self.all_back = asyncio.Event()

    def on_payload(self, data: bytes) -> None:
        if len(data) < PREFIX.size or data[:8] != self.run_id:
            return
        _, _, sent_at = PREFIX.unpack_from(data)
        seconds = max(0.0, time.monotonic() - sent_at)
        self.delivered += 1
        self.latency.observe(seconds)
        self.interval.observe(seconds)
        if self.expected is not None and self.delivered >= self.expected:
            self.all_back.set()


def _memory_mb(admin: str | None) -> float | None:
    if admin is None:
        return None
    try:
        body = fetch_json(f"{admin}/api/backpressure/status", timeout=2.0)
    except (OSError, ValueError):
        return None
    return (body.get("data") or {}).get("currentMemoryMB")


def _trend_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / var
    return slope * 3600


async def _report(run: Run, args: argparse.Namespace, admin: str | None, out: TextIO, final: bool) -> None:
    elapsed = time.monotonic() - run.started
    interval = run.interval.summary_ms()
    run.interval = LatencyReservoir(INTERVAL_SAMPLES)
    memory = await asyncio.to_thread(_memory_mb, admin) if admin else None
    report = {
        "elapsedSeconds": round(elapsed, 3),
        "sent": run.sent,
        "delivered": run.delivered,
        "latencyMs": interval,
        "memoryMB": memory,
    }
    run.reports.append(report)
    if args.json or final:
        return
    line = f"[{elapsed:7.1f}s] sent {run.sent:>9}  delivered {run.delivered:>9}"
    if interval is not None:
        line += f"  latency ms p50 {interval['p50']:.2f} p95 {interval['p95']:.2f} p99 {interval['p99']:.2f}"
    if memory is not None:
        line += f"  sidecar memory {memory:.1f} MB"
    print(line, file=out, flush=True)


def summarize(run: Run, args: argparse.Namespace, duration: float) -> dict[str, Any]:
    """The run's summary (also the --json output)."""
    memory_points = [(r["elapsedSeconds"], r["memoryMB"]) for r in run.reports if r["memoryMB"] is not None]
    summary: dict[str, Any] = {
        "url": args.url,
        "subjects": args.subject_list,
        "targetRate": args.rate,
        "durationSeconds": round(duration, 3),
        "messageSize": args.size,
        "priority": args.priority,
        "sent": run.sent,
        "delivered": run.delivered,
        "publishErrors": run.errors,
        "successRate": round(run.delivered * 100.0 / run.sent, 3) if run.sent else None,
        "actualRate": round(run.sent / duration, 3) if duration > 0 else 0.0,
        "latencyMs": run.latency.summary_ms(),
    }
    if memory_points:
        values = [v for _, v in memory_points]
        summary["memoryMB"] = {
            "first": values[0],
            "last": values[-1],
            "max": max(values),
            "trendMBPerHour": _round(_trend_per_hour(memory_points)),
        }
    if args.soak:
        p99 = [(r["elapsedSeconds"], r["latencyMs"]["p99"]) for r in run.reports if r["latencyMs"]]
        summary["soak"] = {
            "intervals": run.reports,
            "p99TrendMsPerHour": _round(_trend_per_hour(p99)),
        }
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable summary lines."""
    lines = [
        f"sent {summary['sent']}  delivered {summary['delivered']}  success rate "
        f"{summary['successRate'] if summary['successRate'] is not None else '-'} %  "
        f"({summary['actualRate']} msg/s over {summary['durationSeconds']} s)",
    ]
    latency = summary["latencyMs"]
    if latency:
        lines.append(
            f"latency ms  p50 {latency['p50']:.2f}  p95 {latency['p95']:.2f}  p99 {latency['p99']:.2f}  "
            f"max {latency['max']:.2f}  mean {latency['mean']:.2f}"
        )
    else:
        lines.append("latency: nothing delivered")
    memory = summary.get("memoryMB")
    if memory:
        trend = memory["trendMBPerHour"]
        lines.append(
            f"sidecar memory MB  first {memory['first']:.1f}  last {memory['last']:.1f}  "
            f"max {memory['max']:.1f}" + (f"  trend {trend:+.1f} MB/h" if trend is not None else "")
        )
    if summary.get("publishErrors"):
        lines.append(f"publish errors: {summary['publishErrors']}")
    return "\n".join(lines)


async def _probe(url: str) -> dict[str, Any]:
    """The first URL's INFO; OSError (fast) when nothing listens there."""
    parts = urlsplit(url.split(",")[0] if "://" in url else f"nats://{url}")
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), CONNECT_TIMEOUT_S
    )
    try:
        line = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT_S)
    except TimeoutError:
        line = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not line.startswith(b"INFO "):
        return {}
    try:
        info = json.loads(line[5:])
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def describe_target(info: dict[str, Any]) -> str:
    """`kpi-sidecar` when the URL is a sidecar's NATS port (its INFO says so), else `nats-server`."""
    return "kpi-sidecar" if info.get("server_name") == "kpi-sidecar" else "nats-server"


async def drive(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the load; the exit code."""
    import nats

    async def quiet(*_: Any) -> None:
        return None

    admin = normalize_admin_url(args.admin) if args.admin else None
    subjects = args.subject_list
    run = Run()
    options = {
        "connect_timeout": 2,
        "reconnect_time_wait": 0.5,
        "error_cb": quiet,
        "disconnected_cb": quiet,
        "reconnected_cb": quiet,
        "closed_cb": quiet,
    }
    try:
        info = await _probe(args.url)
        target = describe_target(info)
        if target != "kpi-sidecar":
            print(
                f"kpi-sidecar loadtest: WARNING: {args.url} is a nats-server {info.get('version', '')}"
                ", not a kpi-sidecar: this measures NATS directly, not through the sidecar",
                file=err,
            )
        # nats-py retries a refused first connection for minutes: bound the wait.
        pub = await asyncio.wait_for(
            nats.connect(args.url, name="kpi-loadtest-pub", **options), CONNECT_TIMEOUT_S
        )
        sub = await asyncio.wait_for(
            nats.connect(args.url, name="kpi-loadtest-sub", **options), CONNECT_TIMEOUT_S
        )
    except Exception as exc:  # nats-py raises several unrelated types
        reason = str(exc) or type(exc).__name__
        print(f"kpi-sidecar loadtest: cannot connect to {args.url}: {reason}", file=err)
        return 1

    async def on_msg(msg: Any) -> None:
        run.on_payload(msg.data)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        for subject in dict.fromkeys(subjects):
            await sub.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        # Twice: nats-py's first flush may overtake the SUBs it buffered (docs/architecture.md).
        await sub.flush(timeout=5)
        await sub.flush(timeout=5)
        headers = {"KPI-Priority": args.priority} if args.priority else None
        padding = b"x" * (args.size - PREFIX.size)
        rate = args.rate
        total = int(rate * args.duration) if args.duration > 0 else None
        max_per_slice = max(1, int(rate * MAX_CATCH_UP_S))
        run.started = start = time.monotonic()
        next_report = start + args.report_every
        while not stop.is_set() and (total is None or run.sent < total):
            now = time.monotonic()
            due = int((now - start) * rate) + 1
            if total is not None:
                due = min(due, total)
            for _ in range(min(due - run.sent, max_per_slice)):
                seq = run.sent
                payload = PREFIX.pack(run.run_id, seq, time.monotonic()) + padding
                try:
                    await pub.publish(subjects[seq % len(subjects)], payload, headers=headers)
                except Exception:  # a closed or reconnecting connection: count and go on
                    run.errors += 1
                run.sent = seq + 1
            if now >= next_report:
                next_report += args.report_every
                await _report(run, args, admin, out, final=False)
            wait = start + run.sent / rate - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(SLICE_S, min(wait, args.report_every)))
        duration = time.monotonic() - start
        with contextlib.suppress(Exception):
            await pub.flush(timeout=5)
        run.expected = run.sent
        if run.delivered < run.sent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.all_back.wait(), DRAIN_WAIT_S)
        await _report(run, args, admin, out, final=True)
    finally:
        for conn in (pub, sub):
            with contextlib.suppress(Exception):
                await conn.close()
    summary = summarize(run, args, duration)
    summary["target"] = target
    if args.json:
        # One line, so that scripts can read the last line of the output.
        print(json.dumps(summary), file=out)
    else:
        print(format_summary(summary), file=out)
    rate_ok = summary["successRate"] is not None and summary["successRate"] >= args.min_success_rate
    if args.min_success_rate > 0 and not rate_ok:
        print(
            f"kpi-sidecar loadtest: success rate {summary['successRate']} % is below "
            f"{args.min_success_rate} %",
            file=err,
        )
        return 1
    return 0


def validate(args: argparse.Namespace) -> str | None:
    """An error message for impossible arguments, else None (and args.subject_list is set)."""
    args.subject_list = [s.strip() for s in args.subjects.split(",") if s.strip()]
    if not args.subject_list:
        return "--subjects needs at least one subject"
    if any("*" in s.split(".") or ">" in s.split(".") for s in args.subject_list):
        return "--subjects must be literal subjects (no wildcard)"
    if args.rate <= 0:
        return "--rate must be positive"
    if args.duration < 0 or (args.duration == 0 and not args.soak):
        return "--duration must be positive (0 runs until interrupted, with --soak only)"
    if args.size < PREFIX.size:
        return f"--size must be at least {PREFIX.size} bytes (the sequence and timestamp prefix)"
    if args.report_every <= 0:
        return "--report-every must be positive"
    return None


def run_loadtest(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of `kpi-sidecar loadtest`."""
    out = out or sys.stdout
    err = err or sys.stderr
    problem = validate(args)
    if problem is not None:
        print(f"kpi-sidecar loadtest: {problem}", file=err)
        return 2
    if args.url is None:
        found = dev_sidecar()
        if found is not None:
            args.url = found[0]["urls"]["nats"]
            args.admin = args.admin or found[0]["urls"].get("admin")
            print(f"kpi-sidecar loadtest: {args.url}, {found[1]}", file=err)
        else:
            args.url = DEFAULT_URL
            print(
                f"kpi-sidecar loadtest: {args.url}, the default NATS address (no --url given, no sidecar "
                "started by `make run`)",
                file=err,
            )
    if args.soak and not args.admin:
        print("kpi-sidecar loadtest: --soak without --admin: the sidecar's memory is not reported", file=err)
    return asyncio.run(drive(args, out, err))
