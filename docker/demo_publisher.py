"""A demo application: publishes kpi.* messages with mixed KPI-Priority headers to NATS_URL.

It knows nothing of the sidecar beyond NATS_URL (nats://127.0.0.1:4222 next to a kpi-sidecar). Every
`--burst-every` seconds it publishes at `--burst-factor` times its rate for `--burst-seconds`, so the
dashboards show the degradation levels move.

    python docker/demo_publisher.py --rate 50            # forever, until SIGTERM / Ctrl-C
    python docker/demo_publisher.py --count 100          # 100 messages, then exit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import time
from collections.abc import Sequence

import nats

log = logging.getLogger("demo_publisher")

# (subject, KPI-Priority header or None, weight). No header: the sidecar's policies decide
# (kpi.payment.> is critical, kpi.marketing.> low, anything else medium).
SUBJECTS: tuple[tuple[str, str | None, int], ...] = (
    ("kpi.payment.conversion", "critical", 1),
    ("kpi.payment.refund", None, 1),
    ("kpi.onboarding.completion", "high", 2),
    ("kpi.analytics.result", "medium", 3),
    ("kpi.analytics.session", None, 2),
    ("kpi.marketing.ctr", "low", 4),
    ("kpi.marketing.impression", None, 4),
)
PRIORITY_HEADER = "KPI-Priority"


def pick_message(rng: random.Random, seq: int) -> tuple[str, bytes, dict[str, str] | None]:
    """One message: subject, JSON payload, headers (None when the policies should decide)."""
    subject, priority, _ = rng.choices(SUBJECTS, weights=[w for _, _, w in SUBJECTS])[0]
    payload = json.dumps(
        {
            "kpi": subject.rsplit(".", 1)[-1],
            "value": round(rng.random() * 100, 3),
            "seq": seq,
            "ts": time.time(),
        }
    ).encode()
    headers = {PRIORITY_HEADER: priority} if priority is not None else None
    return subject, payload, headers


def current_rate(elapsed: float, args: argparse.Namespace) -> float:
    """The publish rate at `elapsed` seconds: the base rate, or the burst rate inside a burst window."""
    if args.burst_every > 0 and elapsed % args.burst_every >= args.burst_every - args.burst_seconds:
        return args.rate * args.burst_factor
    return args.rate


async def connect(url: str, stop: asyncio.Event) -> nats.NATS | None:
    """Connect, retrying every second (the sidecar may still be starting); None if stopped first."""

    async def log_error(err: Exception) -> None:
        log.warning("nats: %s", str(err) or type(err).__name__)

    connecting = asyncio.ensure_future(
        nats.connect(
            url,
            name="kpi-demo-publisher",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            drain_timeout=5,
            error_cb=log_error,
        )
    )
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if connecting.done():
        log.info("connected to %s", url)
        return connecting.result()
    connecting.cancel()
    await asyncio.wait({connecting})
    return None


async def publish(args: argparse.Namespace, stop: asyncio.Event, rng: random.Random) -> int:
    """Publish until `stop` is set or `args.count` messages are out; return how many were published."""
    nc = await connect(args.url, stop)
    if nc is None:
        log.info("stopped before connecting")
        return 0
    sent = 0
    started = time.monotonic()
    next_at = started
    last_report = started
    try:
        while not stop.is_set() and (args.count is None or sent < args.count):
            subject, payload, headers = pick_message(rng, sent)
            await nc.publish(subject, payload, headers=headers)
            sent += 1
            now = time.monotonic()
            # Never more than a second of catch-up after a stall.
            next_at = max(next_at + 1 / current_rate(now - started, args), now - 1)
            await asyncio.sleep(max(0.0, next_at - now))
            if now - last_report >= args.report_every:
                log.info("published %d messages", sent)
                last_report = now
        await nc.flush(timeout=10)
    finally:
        await nc.drain()
    log.info("published %d messages, done", sent)
    return sent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--rate", type=float, default=float(os.environ.get("DEMO_RATE", "50")), help="msg/s")
    parser.add_argument("--count", type=int, default=None, help="stop after this many messages")
    parser.add_argument("--burst-every", type=float, default=float(os.environ.get("DEMO_BURST_EVERY", "120")))
    parser.add_argument("--burst-seconds", type=float, default=20)
    parser.add_argument("--burst-factor", type=float, default=float(os.environ.get("DEMO_BURST_FACTOR", "5")))
    parser.add_argument("--report-every", type=float, default=10, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=None, help="seed of the subject/priority mix")
    return parser


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_signal() -> None:
        # The first signal stops cleanly (flush, drain); a second one does not wait.
        if stop.is_set():
            main_task.cancel()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await publish(args, stop, random.Random(args.seed))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.rate <= 0:
        raise SystemExit("--rate must be positive")
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
