"""The admin API's load test: synthetic traffic through the real publish path, measured end to end.

Messages are generated in timed slices (one task, every SLICE_S it publishes what is due), offered with
`Publisher.publish_message` so policies apply as to any application's message, and counted on arrival by
a nats-py subscription on the upstream servers. Each payload starts with PREFIX (run id, sequence
number, generation time on time.monotonic()), so latency is the time from generation to delivery
by the upstream NATS server back into this process.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import math
import random
import secrets
import ssl
import time
from typing import TYPE_CHECKING, Any, Final

from policies.engine import Verdict
from proxy.admin.history import iso_timestamp
from proxy.admin.requests import MAX_RATE, PREFIX, LoadTestSpec
from proxy.admin.responses import LatencySummary, LoadTestStatus
from proxy.nats.protocol import add_header

if TYPE_CHECKING:
    from proxy.config.schema import UpstreamConfig
    from proxy.sidecar import Sidecar

log = logging.getLogger(__name__)

SLICE_S: Final = 0.01
# A slice never publishes more than this many seconds' worth of messages (after a stall of the loop).
MAX_CATCH_UP_S: Final = 0.5
# After the last message, how long to wait for deliveries still on their way.
DRAIN_WAIT_S: Final = 2.0
MAX_LATENCY_SAMPLES: Final = 100_000
RECEIVER_CONNECT_TIMEOUT_S: Final = 3.0
RECEIVER_NAME: Final = "kpi-sidecar-loadtest"
__all__ = ["MAX_RATE", "PREFIX", "LatencyReservoir", "LoadTest", "LoadTestError", "LoadTestSpec"]


class LoadTestError(Exception):
    """A load test cannot start; `field` names the offending body field, `status` the HTTP status."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class LatencyReservoir:
    """Latencies in seconds: every one up to `capacity`, then a uniform random sample (algorithm R)."""

    def __init__(self, capacity: int = MAX_LATENCY_SAMPLES, rng: random.Random | None = None) -> None:
        self.capacity = capacity
        self.values = array.array("d")
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self._rng = rng or random.Random()

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if seconds > self.maximum:
            self.maximum = seconds
        if len(self.values) < self.capacity:
            self.values.append(seconds)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.capacity:
            self.values[slot] = seconds

    def summary_ms(self) -> dict[str, float] | None:
        """p50/p95/p99/max/mean in milliseconds, or None before the first observation."""
        if not self.count:
            return None
        ordered = sorted(self.values)
        return {
            "p50": round(percentile(ordered, 50) * 1000, 3),
            "p95": round(percentile(ordered, 95) * 1000, 3),
            "p99": round(percentile(ordered, 99) * 1000, 3),
            "max": round(self.maximum * 1000, 3),
            "mean": round(self.total / self.count * 1000, 3),
        }


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class LoadTest:
    """At most one load test at a time for one sidecar; start, stop, status."""

    def __init__(self, sidecar: Sidecar, *, rng: random.Random | None = None) -> None:
        self._sidecar = sidecar
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reset(None)
        self.state = "idle"

    def _reset(self, spec: LoadTestSpec | None) -> None:
        self.spec = spec
        self.run_id = secrets.token_bytes(8)
        self.state = "starting"
        self.started_mono: float | None = None
        self.finished_mono: float | None = None
        self.started_wall: float | None = None
        self.finished_wall: float | None = None
        self.sent = 0
        self.accepted = 0
        self.queued = 0
        self.dropped = 0
        self.blocked = 0
        self.dropped_by_reason: dict[str, int] = {}
        self.delivered = 0
        self.measured = False
        self.measurement_error: str | None = None
        self.latency = LatencyReservoir(rng=self._rng)
        self.total = 0

    @property
    def running(self) -> bool:
        """True from start until the last delivery wait is over."""
        return self._task is not None and not self._task.done()

    async def start(self, spec: LoadTestSpec) -> LoadTestStatus:
        """Start a run; LoadTestError(409) while one runs, (400) when messages would exceed max_payload."""
        sidecar = self._sidecar
        if self.running:
            raise LoadTestError("a load test is already running", status=409)
        if sidecar.shutting_down:
            raise LoadTestError("the sidecar is shutting down", status=503)
        headers = _headers(spec.priority)
        if spec.message_size + len(headers or b"") > sidecar.max_payload:
            raise LoadTestError(
                f"messageSize must not exceed the upstream's max_payload ({sidecar.max_payload} bytes)",
                field="messageSize",
            )
        self._reset(spec)
        self.total = max(1, int(spec.messages_per_second * spec.duration_seconds))
        self._stop = asyncio.Event()
        # Claim the slot before the first await so that a concurrent start gets its 409.
        self._task = sidecar.loop.create_task(self._run(spec, headers), name="load-test")
        return self.status()

    async def stop(self) -> LoadTestStatus:
        """Stop the running test (no-op when none runs) and return its status."""
        task = self._task
        if task is not None and not task.done():
            self._stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.state in ("running", "draining", "starting"):
                self.state = "stopped"
        return self.status()

    async def close(self) -> None:
        """Stop and release everything (admin app cleanup)."""
        task = self._task
        if task is not None and not task.done():
            self._stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, spec: LoadTestSpec, headers: bytes | None) -> None:
        receiver = None
        try:
            receiver = await self._connect_receiver(spec)
            if self._stop.is_set():
                return
            self.state = "running"
            await self._generate(spec, headers)
            if not self._stop.is_set():
                self.state = "draining"
                await self._drain_wait()
            self.state = "stopped" if self._stop.is_set() else "completed"
        except (OSError, RuntimeError, ValueError) as err:
            self.state = "failed"
            self.measurement_error = self.measurement_error or str(err)
            log.warning("load test failed: %s", err)
        finally:
            self.finished_mono = self._sidecar.clock()
            self.finished_wall = time.time()
            if self._stop.is_set() and self.state in ("starting", "running", "draining"):
                self.state = "stopped"
            if receiver is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(receiver.close(), 2.0)
            log.info(
                "load test %s: sent=%d delivered=%d dropped=%d blocked=%d",
                self.state,
                self.sent,
                self.delivered,
                self.dropped,
                self.blocked,
            )

    async def _connect_receiver(self, spec: LoadTestSpec) -> Any:
        """A nats-py connection to the upstream servers subscribed to the test's subjects, or None."""
        # Imported here, not at the top: nats-py costs the sidecar about 3 MB of RSS, which only a load
        # test needs (idle sidecar: 46.9 MB with the import here, 49.9 MB with it at the top).
        import nats

        async def quiet(*_: Any) -> None:
            return None

        upstream = self._sidecar.config.upstream
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=list(upstream.servers),
                    name=RECEIVER_NAME,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    error_cb=quiet,
                    disconnected_cb=quiet,
                    reconnected_cb=quiet,
                    closed_cb=quiet,
                    **_auth_options(upstream),
                ),
                RECEIVER_CONNECT_TIMEOUT_S,
            )
        except Exception as err:  # nats-py raises many types (NoServersError, TimeoutError, OSError...)
            self.measurement_error = f"cannot subscribe on the upstream: {str(err) or type(err).__name__}"
            log.warning("load test: %s; delivery and latency are not measured", self.measurement_error)
            return None
        run_id = self.run_id
        monotonic = time.monotonic
        unpack = PREFIX.unpack_from
        prefix_size = PREFIX.size
        latency = self.latency

        async def on_msg(msg: Any) -> None:
            data = msg.data
            if len(data) < prefix_size or data[:8] != run_id:
                return
            _, _, sent_at = unpack(data)
            self.delivered += 1
            latency.observe(max(0.0, monotonic() - sent_at))

        try:
            for subject in dict.fromkeys(spec.subjects):
                await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
            # Twice: nats-py's first flush may overtake the SUBs it buffered (docs/architecture.md).
            await nc.flush(timeout=2)
            await nc.flush(timeout=2)
        except Exception as err:  # nats-py's own error types, timeouts, a lost connection
            self.measurement_error = f"cannot subscribe on the upstream: {str(err) or type(err).__name__}"
            log.warning("load test: %s; delivery and latency are not measured", self.measurement_error)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)
            return None
        self.measured = True
        return nc

    async def _generate(self, spec: LoadTestSpec, headers: bytes | None) -> None:
        sidecar = self._sidecar
        rate = spec.messages_per_second
        subjects = spec.subjects
        n_subjects = len(subjects)
        padding = b"x" * (spec.message_size - PREFIX.size)
        pack = PREFIX.pack
        run_id = self.run_id
        publish = sidecar.publisher.publish_message
        monotonic = time.monotonic
        max_per_slice = max(1, int(rate * MAX_CATCH_UP_S))
        total = self.total
        self.started_mono = start = sidecar.clock()
        self.started_wall = time.time()
        while self.sent < total and not self._stop.is_set() and not sidecar.shutting_down:
            now = sidecar.clock()
            due = min(total, int((now - start) * rate) + 1)
            count = min(due - self.sent, max_per_slice)
            for _ in range(count):
                seq = self.sent
                # The stamp uses time.monotonic(): uvloop's loop.time() moves in whole milliseconds.
                payload = pack(run_id, seq, monotonic()) + padding
                decision = publish(subjects[seq % n_subjects], None, payload, headers, now)
                self._count(decision.verdict, decision.reason)
                self.sent = seq + 1
            if self.sent >= total:
                break
            next_at = start + self.sent / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(SLICE_S, next_at - sidecar.clock()))
        if sidecar.shutting_down and self.sent < total:
            self._stop.set()

    def _count(self, verdict: Verdict, reason: str | None) -> None:
        if verdict is Verdict.FORWARD:
            self.accepted += 1
        elif verdict is Verdict.QUEUE:
            self.accepted += 1
            self.queued += 1
        elif verdict is Verdict.DROP:
            self.dropped += 1
            key = reason or "dropped"
            self.dropped_by_reason[key] = self.dropped_by_reason.get(key, 0) + 1
        else:
            self.blocked += 1

    async def _drain_wait(self) -> None:
        if not self.measured:
            return
        sidecar = self._sidecar
        deadline = sidecar.clock() + DRAIN_WAIT_S
        while sidecar.clock() < deadline and not self._stop.is_set():
            if self.delivered >= self.accepted:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.05)

    def status(self) -> LoadTestStatus:
        """What GET /api/backpressure/load-test/status shows."""
        spec = self.spec
        now = self._sidecar.clock()
        elapsed = 0.0
        if self.started_mono is not None:
            elapsed = (self.finished_mono or now) - self.started_mono
        progress = 0.0
        if spec is not None:
            if self.state == "completed":
                progress = 100.0
            elif self.total:
                progress = min(100.0, self.sent * 100.0 / self.total)
        success_rate = None
        if self.measured and self.sent:
            success_rate = round(self.delivered * 100.0 / self.sent, 3)
        latency = self.latency.summary_ms()
        return LoadTestStatus(
            state=self.state,  # type: ignore[arg-type]
            running=self.running,
            id=self.run_id.hex() if spec is not None else None,
            spec=spec,
            started_at=iso_timestamp(self.started_wall) if self.started_wall else None,
            finished_at=iso_timestamp(self.finished_wall)
            if self.finished_wall and not self.running
            else None,
            elapsed_seconds=round(elapsed, 3),
            progress=round(progress, 2),
            planned_messages=self.total,
            sent=self.sent,
            actual_rate=round(self.sent / elapsed, 3) if elapsed > 0 else 0.0,
            accepted=self.accepted,
            queued=self.queued,
            forwarded=self.delivered if self.measured else None,
            dropped=self.dropped,
            dropped_by_reason=dict(self.dropped_by_reason),
            blocked=self.blocked,
            success_rate=success_rate,
            latency_ms=LatencySummary(**latency) if latency is not None else None,
            measured=self.measured,
            measurement_error=self.measurement_error,
        )


def _headers(priority: str | None) -> bytes | None:
    return add_header(None, "KPI-Priority", priority) if priority else None


def _auth_options(upstream: UpstreamConfig) -> dict[str, Any]:
    """nats-py connect options for the sidecar's own upstream credentials."""
    options: dict[str, Any] = {}
    if upstream.creds_file:
        options["user_credentials"] = upstream.creds_file
    elif upstream.nkey_seed_file:
        options["nkeys_seed"] = upstream.nkey_seed_file
    elif upstream.token:
        options["token"] = upstream.token
    elif upstream.user:
        options["user"] = upstream.user
        options["password"] = upstream.password or ""
    tls = upstream.tls
    if tls is not None or any(s.startswith("tls://") for s in upstream.servers):
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        if tls is not None and tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls is not None and tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        options["tls"] = context
    return options
