"""`make bench`: the sidecar against nats-server direct and a nats-server leaf node, side by side.

One run starts a hub nats-server, a leaf node nats-server connected to it and the sidecar (upstream: the
hub; all policies on, thresholds set so that the level stays none), then measures each workload through
each path, interleaved round by round:

  (a) raw throughput of 128 B and 1 KiB PUBs from a pipelining raw-socket publisher process,
      counted by a raw-socket subscriber process on the hub;
  (b) a nats-py application publishing as fast as it can;
  (c) request-reply latency at a fixed rate (responder on the hub);
  (d) CPU and RSS of the sidecar (and of the leaf node) at a fixed 10 k msg/s;
  (e) sidecar RSS before and after publishing to 100 k distinct subjects, three times;

then profiles the sidecar with py-spy during (a) and (b) (after the measured runs, so that sampling does
not disturb them), runs the parser and engine micro-benchmarks, prints the table and writes
docs/benchmarks.md. Numbers are ratios measured side by side on one machine, never absolute thresholds.

    python -m bench.run            # full (~3-5 min); writes docs/benchmarks.md
    python -m bench.run --quick    # ~1 min; prints only, unless --write
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import hotspots, report
from bench.loadgen import pub_frame, raw_connect
from bench.report import pct
from bench.topology import ROOT, Topology

PATHS = ("direct", "leaf", "sidecar")
LEVELS = ("none", "low", "medium", "high", "critical")
# py-spy profiles taken after the measured runs: (profile, the workload letter that asks for it).
PROFILED = (("raw128", "a"), ("natspy", "b"), ("http", "i"))


@dataclass(frozen=True)
class Settings:
    """How long and how often each workload runs."""

    rounds: int
    duration: float  # seconds per throughput run
    rr_rounds: int
    rr_duration: float
    rr_rate: float
    steady_rate: float
    steady_duration: float
    distinct: int
    profile_seconds: float
    micro_frames: int


FULL = Settings(
    rounds=3,
    duration=3.0,
    rr_rounds=2,
    rr_duration=5.0,
    rr_rate=1000.0,
    steady_rate=10_000.0,
    steady_duration=8.0,
    distinct=100_000,
    profile_seconds=5.0,
    micro_frames=300_000,
)
QUICK = Settings(
    rounds=1,
    duration=1.5,
    rr_rounds=1,
    rr_duration=3.0,
    rr_rate=1000.0,
    steady_rate=10_000.0,
    steady_duration=4.0,
    distinct=100_000,
    profile_seconds=3.0,
    micro_frames=100_000,
)


# ------------------------------------------------------------------------------------------- processes


class Worker:
    """A `python -m bench.loadgen ...` process and the JSON events it prints."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(ROOT),
                env=env,
            )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Wait for `event`; raise (with the worker's stderr) if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"{self.args[0]}: no {event!r} after {timeout}s; {self.stderr()}"
                ) from None
            if got["event"] == event:
                return got
            if got["event"] == "exit":
                raise RuntimeError(f"{self.args[0]} exited before {event!r}: {self.stderr()}")

    def poll_event(self, event: str) -> bool:
        """True if `event` has arrived (non-blocking)."""
        try:
            while True:
                if self.events.get_nowait()["event"] == event:
                    return True
        except queue.Empty:
            return False

    def stderr(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Sampler:
    """Samples CPU time and RSS of some processes every `every` seconds in a thread."""

    def __init__(self, pids: dict[str, int], every: float = 0.25) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.every = every
        self.samples: list[tuple[float, dict[str, tuple[float, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, name: str, pid: int) -> None:
        """Also sample this process from now on (e.g. the publisher, once started)."""
        with contextlib.suppress(psutil.Error):
            self.procs = {**self.procs, name: psutil.Process(pid)}

    def _take(self) -> None:
        now = time.monotonic()
        row: dict[str, tuple[float, int]] = {}
        for name, proc in self.procs.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                row[name] = (times.user + times.system, proc.memory_info().rss)
        self.samples.append((now, row))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def window(self, name: str, start: float, end: float) -> dict[str, float]:
        """CPU (% of one core) between the samples closest inside [start, end], and max RSS (MB) there."""
        inside = [(t, row[name]) for t, row in self.samples if start <= t <= end and name in row]
        if len(inside) < 2:
            return {"cpu_percent": float("nan"), "rss_mb": float("nan")}
        (t0, (c0, _)), (t1, (c1, _)) = inside[0], inside[-1]
        return {
            "cpu_percent": 100.0 * (c1 - c0) / (t1 - t0),
            "rss_mb": max(rss for _, (_, rss) in inside) / 1_048_576,
        }


class LevelWatcher:
    """Polls the sidecar's degradation level every 2 s (paused during latency runs); keeps the highest.

    The sidecar logs every level transition too (collected at the end); polling catches the level in
    force and the load behind it.
    """

    def __init__(self, topo: Topology, every: float = 2.0) -> None:
        self.topo = topo
        self.every = every
        self.highest = "none"
        self.highest_at: dict[str, Any] = {}
        self.errors = 0
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            sidecar = self.topo.sidecar
            if self.paused.is_set() or sidecar is None:
                continue
            try:
                state = sidecar.level()
            except Exception:
                self.errors += 1  # the admin port may be slow under load: count, go on
                continue
            level = state.get("level") or "none"
            if level in LEVELS and LEVELS.index(level) > LEVELS.index(self.highest):
                self.highest = level
                self.highest_at = state

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------- workloads


class Bench:
    """Runs the workloads on one topology and collects raw results."""

    def __init__(self, topo: Topology, settings: Settings, workdir: Path, log: Any) -> None:
        self.topo = topo
        self.s = settings
        self.workdir = workdir
        self.say = log
        self.ids = itertools.count(1)
        self.paths: tuple[str, ...] = PATHS
        self.watcher: LevelWatcher | None = None
        self.results: dict[str, Any] = {"runs": []}
        # Level changes the shedding workloads (g) caused on purpose: not reported as the run's level.
        self.expected_changes: set[str] = set()
        assert topo.sidecar is not None and topo.leaf is not None
        self.pids = {"sidecar": topo.sidecar.pid, "leaf": topo.leaf.pid, "hub": topo.hub.pid}

    def worker(self, *args: str) -> Worker:
        return Worker(list(args), self.workdir / f"worker-{args[0]}.log")

    def order(self, round_no: int, among: tuple[str, ...] = PATHS) -> tuple[str, ...]:
        # Alternate the order so that no path always runs first (or right after another).
        paths = tuple(p for p in among if p in self.paths)
        return paths if round_no % 2 == 0 else tuple(reversed(paths))

    def probe(self, addr: str, subject: str, sub: Worker, timeout: float = 20.0) -> float:
        """Publish probes to `addr` until the subscriber sees one (interest has propagated)."""
        start = time.monotonic()
        sock = raw_connect(addr)
        try:
            frame = pub_frame(subject, b"")
            while time.monotonic() - start < timeout:
                sock.sendall(frame)
                for _ in range(4):
                    if sub.poll_event("probe"):
                        return time.monotonic() - start
                    time.sleep(0.005)
        finally:
            sock.close()
        raise TimeoutError(f"{addr}: probe never reached the subscriber")

    def flow(
        self,
        path: str,
        publisher: list[str],
        duration: float,
        profile: Path | None = None,
        subscriber_on_path: bool = False,
        subscriber: tuple[str, ...] = ("sub",),
    ) -> dict[str, Any]:
        """Subscriber on the hub, probe, then `publisher` through `path`; CPU/RSS sampled meanwhile.
        With `subscriber_on_path`, the other way round: the subscriber connects through `path` and the
        probes (and the publisher's `{addr}`) go to the hub."""
        rid = next(self.ids)
        data, probe, end = f"bench.d.{rid}", f"bench.p.{rid}", f"bench.e.{rid}"
        hub = self.topo.hub.addr
        sub_addr, pub_addr = (
            (self.topo.addr(path), hub) if subscriber_on_path else (hub, self.topo.addr(path))
        )
        sub = self.worker(*subscriber, "--addr", sub_addr, "--data", data, "--probe", probe, "--end", end)
        pub: Worker | None = None
        spy: subprocess.Popen[bytes] | None = None
        sampler = Sampler(self.pids)
        try:
            sub.expect("ready", 20)
            self.probe(pub_addr, probe, sub)
            args = [
                a.replace("{subject}", data).replace("{end}", end).replace("{addr}", pub_addr)
                for a in publisher
            ]
            pub = self.worker(*args)
            pub.expect("ready", 20)
            sampler.add("publisher", pub.proc.pid)
            if profile is not None:
                assert self.topo.sidecar is not None
                spy = hotspots.start_recording(self.topo.sidecar.pid, self.s.profile_seconds, profile)
            t_ready = time.monotonic()
            loadavg = os.getloadavg()[0]
            res_pub = pub.expect("result", duration + 180)
            res_sub = sub.expect("result", 60)
        finally:
            sampler.stop()
            for w in (pub, sub):
                if w is not None:
                    w.close()
            if spy is not None:
                _, err = spy.communicate(timeout=60)
                if spy.returncode:
                    self.say(f"  py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
        t_start = res_pub.get("t_start", t_ready)
        t_stop = res_pub.get("t_sent", t_start + duration)
        window = (t_start + min(1.0, duration / 3), t_stop)
        return {
            "pub": res_pub,
            "sub": res_sub,
            "loadavg": loadavg,
            "resources": {
                name: self.sampler_window(sampler, name, window) for name in [*self.pids, "publisher"]
            },
        }

    @staticmethod
    def sampler_window(sampler: Sampler, name: str, window: tuple[float, float]) -> dict[str, float]:
        return sampler.window(name, *window)

    # (a) ------------------------------------------------------------------------------------------
    def raw_throughput(self, size: int) -> None:
        for r in range(self.s.rounds):
            for path in self.order(r):
                publisher = [
                    "pub",
                    "--addr",
                    self.topo.addr(path),
                    "--subject",
                    "{subject}",
                    "--end",
                    "{end}",
                ]
                publisher += ["--size", str(size), "--duration", str(self.s.duration)]
                res = self.flow(path, publisher, self.s.duration)
                sub = res["sub"]
                span = sub["t_last"] - sub["t_first"]
                rate = (sub["count"] - sub["first_chunk"]) / span if span > 0 else float("nan")
                self.record(f"raw{size}", path, r, rate, res, delivered=sub["count"], sent=res["pub"]["sent"])

    # (f) ------------------------------------------------------------------------------------------
    def raw_delivery(self, size: int = 128) -> None:
        """The other direction: a raw publisher on the hub, the counting subscriber behind the path."""
        for r in range(self.s.rounds):
            for path in self.order(r):
                publisher = ["pub", "--addr", "{addr}", "--subject", "{subject}", "--end", "{end}"]
                publisher += ["--size", str(size), "--duration", str(self.s.duration)]
                res = self.flow(path, publisher, self.s.duration, subscriber_on_path=True)
                sub = res["sub"]
                span = sub["t_last"] - sub["t_first"]
                rate = (sub["count"] - sub["first_chunk"]) / span if span > 0 else float("nan")
                self.record(f"sub{size}", path, r, rate, res, delivered=sub["count"], sent=res["pub"]["sent"])

    # (b) ------------------------------------------------------------------------------------------
    def natspy(self, size: int = 128) -> None:
        for r in range(self.s.rounds):
            for path in self.order(r):
                url = f"nats://{self.topo.addr(path)}"
                publisher = ["natspy-pub", "--url", url, "--subject", "{subject}", "--end", "{end}"]
                publisher += ["--size", str(size), "--duration", str(self.s.duration)]
                res = self.flow(path, publisher, self.s.duration)
                pub = res["pub"]
                self.record(
                    "natspy", path, r, pub["rate"], res, delivered=res["sub"]["count"], sent=pub["sent"]
                )

    # (g) ------------------------------------------------------------------------------------------
    def shedding(self, level: str, size: int = 128, requests: bool = False) -> None:
        """Intake while the sidecar sheds: HPUBs with a KPI-Priority mix (40/40/15/5 % low, medium, high,
        critical) from a pipelining publisher, through a sidecar held at `level`, against the leaf node.

        The level is held by the memory signal (maxMemoryUsageMB set under the sidecar's own RSS), which
        does not move with the traffic measured: the sidecar's RSS divided by it stays in the level's band
        (high: 150-200 %, critical: >= 200 %). Intake is what the publisher got taken in charge: messages
        sent over the time until the PONG that follows them (the sidecar forwards only part of them)."""
        with self.unwatched():  # the level is not none here on purpose
            self._shedding(level, size, requests)

    def _shedding(self, level: str, size: int, requests: bool) -> None:
        self.restart_with(None)
        assert self.topo.sidecar is not None
        time.sleep(1.0)
        rss = psutil.Process(self.topo.sidecar.pid).memory_info().rss / 1_048_576
        # High: 155 % at the fresh RSS leaves room for the RSS to grow by 25 % under load (under 200 %).
        limit = rss / (1.55 if level == "high" else 3.0)
        self.restart_with({"maxMemoryUsageMB": round(limit, 1)})
        self.wait_level(level)
        self.say(f"  sidecar held at {level} (maxMemoryUsageMB {limit:.1f}, RSS {rss:.1f} MB)")
        try:
            for r in range(self.s.rounds):
                for path in self.order(r, ("leaf", "sidecar")):
                    publisher = ["pub", "--addr", self.topo.addr(path), "--subject", "{subject}"]
                    publisher += ["--end", "{end}", "--size", str(size), "--headers", "mix"]
                    publisher += ["--duration", str(self.s.duration)]
                    if requests:  # nobody answers: the intake of requests is measured, not round trips
                        publisher += ["--reply", f"bench.inbox.{next(self.ids)}"]
                    res = self.flow(path, publisher, self.s.duration)
                    pub = res["pub"]
                    rate = pub["sent"] / (pub["t_pong"] - pub["t_start"])
                    seen = self.topo.sidecar.level()["level"] if path == "sidecar" else level
                    self.record(
                        f"shed_{level}" + ("_req" if requests else ""),
                        path,
                        r,
                        rate,
                        res,
                        delivered=res["sub"]["count"],
                        sent=pub["sent"],
                        level=seen,
                        shed=True,
                    )
        finally:
            self.restart_with(None)

    @contextlib.contextmanager
    def unwatched(self, on_purpose: bool = True) -> Iterator[None]:
        """The level watcher paused: for runs that raise the level on purpose (a frozen hub, a memory
        limit under the RSS: the transitions they log are not findings either), and for latency runs (an
        admin request would show in their p99; `on_purpose=False`, their transitions are)."""
        if self.watcher is not None:
            self.watcher.paused.set()
        # The sidecar's log outlives its restarts: only the transitions logged meanwhile are expected.
        before = len(self.topo.sidecar.level_changes()) if self.topo.sidecar is not None else 0
        try:
            yield
        finally:
            if on_purpose and self.topo.sidecar is not None:
                self.expected_changes.update(self.topo.sidecar.level_changes()[before:])
            if self.watcher is not None:
                self.watcher.paused.clear()

    def restart_with(self, backpressure: dict[str, Any] | None) -> None:
        sidecar = self.topo.restart_sidecar(backpressure)
        self.pids["sidecar"] = sidecar.pid

    def wait_level(self, level: str, timeout: float = 20.0) -> None:
        assert self.topo.sidecar is not None
        deadline = time.monotonic() + timeout
        while True:
            seen = self.topo.sidecar.level()["level"]
            if seen == level:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sidecar at level {seen}, wanted {level}")
            time.sleep(0.2)

    # (h) ------------------------------------------------------------------------------------------
    def hpub_none(self, size: int = 128) -> None:
        """HPUBs with `KPI-Priority: medium` at level none, counted on the hub like (a)."""
        for r in range(self.s.rounds):
            for path in self.order(r):
                publisher = [
                    "pub",
                    "--addr",
                    self.topo.addr(path),
                    "--subject",
                    "{subject}",
                    "--end",
                    "{end}",
                ]
                publisher += ["--size", str(size), "--duration", str(self.s.duration), "--headers", "medium"]
                res = self.flow(path, publisher, self.s.duration)
                sub = res["sub"]
                span = sub["t_last"] - sub["t_first"]
                rate = (sub["count"] - sub["first_chunk"]) / span if span > 0 else float("nan")
                self.record(
                    f"hpub{size}", path, r, rate, res, delivered=sub["count"], sent=res["pub"]["sent"]
                )

    # (i) ------------------------------------------------------------------------------------------
    def http_ingest(self, size: int = 128) -> None:
        """HTTP ingest (4 clients, NDJSON batches of 1,000) against a nats-py application publishing the
        same messages straight to the hub (reported in the direct column)."""
        assert self.topo.sidecar is not None
        for r in range(self.s.rounds):
            for path in self.order(r, ("direct", "sidecar")):
                if path == "sidecar":
                    publisher = ["http-pub", "--url", self.topo.sidecar.http_url, "--clients", "4"]
                    publisher += ["--batch", "1000", "--end", "{end}"]
                else:
                    publisher = ["natspy-pub", "--url", f"nats://{self.topo.hub.addr}", "--end", "{end}"]
                publisher += [
                    "--subject",
                    "{subject}",
                    "--size",
                    str(size),
                    "--duration",
                    str(self.s.duration),
                ]
                res = self.flow(path, publisher, self.s.duration)
                pub = res["pub"]
                extra: dict[str, Any] = {}
                if "latencies_us" in pub:
                    lat = pub.pop("latencies_us")
                    extra = {"batch_p50_us": pct(lat, 50), "batch_p99_us": pct(lat, 99)}
                self.record(
                    "http",
                    path,
                    r,
                    pub["rate"],
                    res,
                    delivered=res["sub"]["count"],
                    sent=pub["sent"],
                    **extra,
                )

    # (j) ------------------------------------------------------------------------------------------
    def jetstream_critical(self, size: int = 128) -> None:
        """Critical messages with `delivery: jetstream` through the sidecar (it adds Nats-Msg-Id and waits
        for each PubAck) against a raw client sending HPUBs with Nats-Msg-Id straight to the hub: messages
        stored in the stream per second, from the first write to the last message stored."""
        count = 30_000 if self.s.rounds == 1 else 100_000
        for r in range(self.s.rounds):
            for path in self.order(r, ("direct", "sidecar")):
                rid = next(self.ids)
                subject, name = f"bench.js.{rid}", f"BENCHJS{rid}"
                self.worker(
                    "js-stream", "--url", self.topo.hub.url, "--name", name, "--subjects", subject
                ).expect("result", 30)
                args = ["--addr", self.topo.addr(path), "--subject", subject, "--count", str(count)]
                args += ["--size", str(size)]
                pub = self.worker(
                    *(["pub", "--msg-id", f"b{rid}"] if path == "direct" else ["pub-count"]), *args
                )
                sidecar = (
                    psutil.Process(self.topo.sidecar.pid) if path == "sidecar" and self.topo.sidecar else None
                )
                try:
                    pub.expect("ready", 20)
                    cpu0 = sum(sidecar.cpu_times()[:2]) if sidecar is not None else 0.0
                    loadavg = os.getloadavg()[0]
                    stored, t_done = self.wait_stored(count, 120.0)
                    # The sidecar's CPU time per stored message: less sensitive to the machine's other load
                    # than the rate (the hub, the publisher and the sidecar share its cores).
                    cpu_us = (sum(sidecar.cpu_times()[:2]) - cpu0) * 1e6 / max(stored, 1) if sidecar else None
                    res_pub = pub.expect("result", 60)
                finally:
                    pub.close()
                    self.worker("js-stream", "--url", self.topo.hub.url, "--name", name, "--delete").expect(
                        "result", 30
                    )
                rate = stored / (t_done - res_pub["t_start"])
                run = {"workload": "js", "path": path, "round": r, "rate": rate, "loadavg": loadavg}
                run.update(sent=count, delivered=stored, sidecar_cpu_us_per_msg=cpu_us)
                self.results["runs"].append(run)
                cpu = f", sidecar CPU {cpu_us:.2f} us/msg" if cpu_us is not None else ""
                self.say(
                    f"  js      {path:<8} round {r}: {rate:12,.0f} msg/s stored ({stored}/{count}, "
                    f"load {loadavg:.2f}{cpu})"
                )

    def stream(self, name: str, *args: str) -> None:
        worker = self.worker("js-stream", "--url", self.topo.hub.url, "--name", name, *args)
        try:
            worker.expect("result", 30)
        finally:
            worker.close()

    def wait_stored(self, count: int, timeout: float) -> tuple[int, float]:
        """Poll the hub until its streams hold `count` messages (or stop growing for 10 s)."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            stored = int(self.topo.hub.monitor("/jsz").get("messages", 0))
            now = time.monotonic()
            if stored >= count:
                return stored, now
            if stored != last:
                last, last_change = stored, now
            if now - last_change > 10.0 or now > deadline:
                return stored, last_change
            time.sleep(0.02)

    # (k) ------------------------------------------------------------------------------------------
    def fanout(self, conns: int = 50, size: int = 128) -> None:
        """A raw publisher on the hub, `conns` subscribers of that one subject behind each path: deliveries
        per second to all of them together (a leaf node merges their interest into one subscription)."""
        for r in range(self.s.rounds):
            for path in self.order(r):
                publisher = ["pub", "--addr", "{addr}", "--subject", "{subject}", "--end", "{end}"]
                publisher += ["--size", str(size), "--duration", str(self.s.duration)]
                res = self.flow(
                    path,
                    publisher,
                    self.s.duration,
                    subscriber_on_path=True,
                    subscriber=("multisub", "--conns", str(conns)),
                )
                sub = res["sub"]
                span = sub["t_last"] - sub["t_first"]
                rate = (sub["count"] - sub["first_chunk"]) / span if span > 0 else float("nan")
                sent = res["pub"]["sent"] * conns
                self.record("fanout", path, r, rate, res, delivered=sub["count"], sent=sent)

    # (l) ------------------------------------------------------------------------------------------
    def queue_memory(self, size: int = 128) -> None:
        """Memory per queued message and after the queue drains: the hub is frozen (SIGSTOP), a raw
        publisher sends `count` messages through a fresh sidecar, which queues them once the upstream
        counts as stalled; RSS with the queue full, then the hub resumes and RSS is read again once the
        queue is empty (and a tick later)."""
        # The frozen hub raises the level (upstream_latency) on purpose: not a finding of the run.
        with self.unwatched():
            self._queue_memory(size)

    def _queue_memory(self, size: int) -> None:
        import signal as _signal

        count = 200_000 if self.s.rounds == 1 else 500_000
        self.restart_with(None)
        assert self.topo.sidecar is not None
        sidecar = self.topo.sidecar
        proc = psutil.Process(sidecar.pid)
        time.sleep(1.5)
        idle = proc.memory_info().rss / 1_048_576
        hub = self.topo.hub.proc
        rid = next(self.ids)
        pub = self.worker(
            "pub-count", "--addr", sidecar.addr, "--subject", f"bench.q.{rid}", "--count", str(count)
        )
        pub.expect("ready", 20)  # connected (through a live hub), now publishing
        hub.send_signal(_signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 120
            queued = 0
            while time.monotonic() < deadline:
                queued = sidecar.admin("/api/backpressure/status")["data"]["currentQueueSize"]
                if queued >= count * 0.95:
                    break
                time.sleep(0.5)
            time.sleep(1.0)
            queued = sidecar.admin("/api/backpressure/status")["data"]["currentQueueSize"]
            full = proc.memory_info().rss / 1_048_576
        finally:
            hub.send_signal(_signal.SIGCONT)
        try:
            pub.expect("result", 120)
        finally:
            pub.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sidecar.admin("/api/backpressure/status")["data"]["currentQueueSize"] == 0:
                break
            time.sleep(0.5)
        time.sleep(2.5)  # a tick or two
        drained = proc.memory_info().rss / 1_048_576
        frame = len(pub_frame(f"bench.q.{rid}", b"x" * size))
        per_msg = (full - idle) * 1_048_576 / queued - frame if queued else float("nan")
        self.results["queue_memory"] = {
            "count": count,
            "queued": queued,
            "frame_bytes": frame,
            "rss_idle_mb": idle,
            "rss_full_mb": full,
            "rss_drained_mb": drained,
            "bytes_per_message_beyond_frame": per_msg,
        }
        self.say(
            f"  queue   {queued:,} queued: RSS {idle:.1f} -> {full:.1f} MB ({per_msg:.0f} B per message "
            f"beyond its {frame} B frame), {drained:.1f} MB after draining ({drained / idle:.2f}x idle)"
        )
        self.restart_with(None)

    # (m) ------------------------------------------------------------------------------------------
    def ceiling(self, rate: int = 200_000, size: int = 128) -> None:
        """A raw publisher flooding a sidecar whose rate ceiling (maxPublishRate) is `rate`: the rate the
        subscriber on the hub gets (the ceiling, when the sidecar keeps up with its own limit) and the
        intake (what the publisher got taken in charge; the rest of the flood is queued, then sampled
        as the queue raises the level)."""
        # The queue the ceiling builds raises the level on purpose, until the sidecar is restarted.
        with self.unwatched():
            self._ceiling(rate, size)

    def _ceiling(self, rate: int, size: int) -> None:
        points = []
        try:
            for r in range(self.s.rounds):
                self.restart_with({"maxPublishRate": rate})  # each round from an empty queue, at none
                publisher = ["pub", "--addr", self.topo.addr("sidecar"), "--subject", "{subject}"]
                publisher += ["--end", "{end}", "--size", str(size), "--duration", str(self.s.duration)]
                # The marker goes ahead of the queue (critical lane): the rate is over what came before.
                publisher += ["--end-critical"]
                res = self.flow("sidecar", publisher, self.s.duration)
                pub, sub = res["pub"], res["sub"]
                span = sub["t_last"] - sub["t_first"]
                forwarded = (sub["count"] - sub["first_chunk"]) / span if span > 0 else float("nan")
                intake = pub["sent"] / (pub["t_pong"] - pub["t_start"])
                points.append(
                    {"round": r, "forwarded": forwarded, "intake": intake, "loadavg": res["loadavg"]}
                )
                self.say(
                    f"  ceiling {rate:,}/s round {r}: forwarded {forwarded:12,.0f} msg/s, intake "
                    f"{intake:12,.0f} msg/s (sidecar CPU {res['resources']['sidecar']['cpu_percent']:.0f} %)"
                )
        finally:
            self.restart_with(None)
        self.results["ceiling"] = {"rate": rate, "rounds": points}

    # (c) ------------------------------------------------------------------------------------------
    def request_reply(self) -> None:
        # No admin-API polling meanwhile: an HTTP request handled by the sidecar would show in p99.
        with self.unwatched(on_purpose=False):
            self._request_reply()

    def _request_reply(self) -> None:
        subject = "bench.rr"
        responder = self.worker("responder", "--url", self.topo.hub.url, "--subject", subject)
        try:
            responder.expect("ready", 20)
            for r in range(self.s.rr_rounds):
                for path in self.order(r):
                    url = f"nats://{self.topo.addr(path)}"
                    req = self.worker(
                        "requester",
                        "--url",
                        url,
                        "--subject",
                        subject,
                        "--rate",
                        str(self.s.rr_rate),
                        "--duration",
                        str(self.s.rr_duration),
                    )
                    try:
                        req.expect("ready", 40)
                        loadavg = os.getloadavg()[0]
                        res = req.expect("result", self.s.rr_duration + 60)
                    finally:
                        req.close()
                    lat = sorted(res.pop("latencies_us"))
                    run = {
                        "workload": "rr",
                        "path": path,
                        "round": r,
                        "loadavg": loadavg,
                        "errors": res["errors"],
                        "achieved_rate": res["rate"],
                        "latencies_us": lat,
                    }
                    self.results["runs"].append(run)
                    self.say(
                        f"  rr      {path:<8} round {r}: p50 {pct(lat, 50):8.0f} us  "
                        f"p99 {pct(lat, 99):8.0f} us  ({len(lat)} ok, {res['errors']} errors, "
                        f"load {loadavg:.2f})"
                    )
        finally:
            responder.close()

    # (d) ------------------------------------------------------------------------------------------
    def fresh_sidecar(self) -> None:
        """Restart the sidecar so that memory figures do not carry the peaks of the saturation runs."""
        sidecar = self.topo.restart_sidecar()
        self.pids["sidecar"] = sidecar.pid
        self.results["sidecar_rss_fresh_mb"] = psutil.Process(sidecar.pid).memory_info().rss / 1_048_576

    def steady(self) -> None:
        rate = self.s.steady_rate
        for path in ("leaf", "sidecar"):
            if path not in self.paths:
                continue
            publisher = ["pub", "--addr", self.topo.addr(path), "--subject", "{subject}", "--end", "{end}"]
            publisher += ["--size", "128", "--duration", str(self.s.steady_duration), "--rate", str(rate)]
            res = self.flow(path, publisher, self.s.steady_duration)
            target = "sidecar" if path == "sidecar" else "leaf"
            usage = res["resources"][target]
            run = {
                "workload": "steady",
                "path": path,
                "round": 0,
                "cpu_percent": usage["cpu_percent"],
                "rss_mb": usage["rss_mb"],
                "hub": res["resources"]["hub"],
                "delivered": res["sub"]["count"],
                "sent": res["pub"]["sent"],
                "loadavg": res["loadavg"],
            }
            self.results["runs"].append(run)
            self.say(
                f"  steady  {path:<8} {rate:,.0f} msg/s: {target} CPU {usage['cpu_percent']:.1f} % of one "
                f"core, RSS {usage['rss_mb']:.1f} MB (delivered {run['delivered']}/{run['sent']})"
            )

    # (e) ------------------------------------------------------------------------------------------
    def distinct_subjects(self) -> None:
        assert self.topo.sidecar is not None
        proc = psutil.Process(self.topo.sidecar.pid)
        addr = self.topo.addr("sidecar")
        n = self.s.distinct

        def rss() -> float:
            time.sleep(1.2)  # one engine tick, so that periodic work has run
            return proc.memory_info().rss / 1_048_576

        steps = [("before", None)]
        steps.append((f"{n:,} msgs, one subject", ["--prefix", "bench.same", "--same"]))
        steps.append((f"+{n:,} distinct subjects", ["--prefix", "bench.x1"]))
        steps.append((f"+{n:,} more distinct subjects", ["--prefix", "bench.x2"]))
        steps.append((f"+{n:,} more distinct subjects", ["--prefix", "bench.x3"]))
        points = []
        for label, args in steps:
            elapsed = None
            if args is not None:
                w = self.worker("distinct", "--addr", addr, "--count", str(n), *args)
                try:
                    elapsed = w.expect("result", 300)["elapsed"]
                finally:
                    w.close()
            points.append({"step": label, "rss_mb": rss(), "elapsed": elapsed})
            self.say(f"  distinct {label:<32} RSS {points[-1]['rss_mb']:.1f} MB")
        self.results["distinct"] = points

    # profile ----------------------------------------------------------------------------------------
    def profile(self, names: tuple[str, ...] = ("raw128", "natspy")) -> None:
        if hotspots.py_spy() is None:
            self.say("  py-spy not installed: no profile (pip install py-spy)")
            return
        assert self.topo.sidecar is not None
        secs = self.s.profile_seconds
        duration = secs + 1.5
        addr = self.topo.addr("sidecar")
        http = ["http-pub", "--url", self.topo.sidecar.http_url, "--clients", "4", "--batch", "1000"]
        runs = {
            "raw128": ["pub", "--addr", addr, "--subject", "{subject}", "--end", "{end}", "--size", "128"],
            "natspy": ["natspy-pub", "--url", f"nats://{addr}", "--subject", "{subject}", "--end", "{end}"],
            "http": [*http, "--subject", "{subject}", "--end", "{end}", "--size", "128"],
        }
        profiles = {}
        for name in names:
            publisher = runs[name]
            out = self.workdir / f"profile-{name}.txt"
            self.flow("sidecar", [*publisher, "--duration", str(duration)], duration, profile=out)
            if out.exists():
                profiles[name] = {**hotspots.summarize(out, secs, 250), "raw": str(out)}
                self.say(f"  profile {name}: {profiles[name]['samples']} samples -> {out}")
        self.results["profiles"] = profiles

    def record(
        self, workload: str, path: str, r: int, rate: float, res: dict[str, Any], **extra: Any
    ) -> None:
        run = {
            "workload": workload,
            "path": path,
            "round": r,
            "rate": rate,
            "loadavg": res["loadavg"],
            "sidecar_cpu": res["resources"]["sidecar"]["cpu_percent"],
            "sidecar_rss": res["resources"]["sidecar"]["rss_mb"],
            "publisher_cpu": res["resources"]["publisher"]["cpu_percent"],
            **extra,
        }
        self.results["runs"].append(run)
        lost = 0 if extra.get("shed") else extra.get("sent", 0) - extra.get("delivered", 0)
        lost_text = f", LOST {lost}" if lost else ""
        delivered = f"{extra.get('delivered')}/{extra.get('sent')}{lost_text}"
        self.say(
            f"  {workload:<7} {path:<8} round {r}: {rate:12,.0f} msg/s"
            f"  (delivered {delivered}, load {res['loadavg']:.2f})"
        )


# ------------------------------------------------------------------------------------------- machine


def code_version(root: Path) -> str:
    """Commit of the code the sidecar ran from, and whether proxy/ or policies/ had local changes."""
    try:
        head = subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL
        ).strip()
        dirty = subprocess.check_output(
            ["git", "status", "--porcelain", "proxy", "policies"], cwd=root, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return head + (" + uncommitted changes in proxy/ or policies/" if dirty.strip() else "")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nats_version = subprocess.run(
        [shutil.which("nats-server") or "/usr/sbin/nats-server", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nats_server": nats_version,
        "hostname": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def background_cpu(seconds: float = 1.0) -> float:
    """Machine-wide CPU busy percent (all cores = 100) while nothing of ours runs."""
    return psutil.cpu_percent(interval=seconds)


# ------------------------------------------------------------------------------------------- micro


def micro(frames: int, sidecar_root: Path) -> dict[str, float]:
    """The parser and engine micro-benchmarks (bench/bench_parser.py, bench/bench_engine.py)."""
    env = {**os.environ, "PYTHONPATH": f"{sidecar_root}{os.pathsep}{ROOT}"}
    out: dict[str, float] = {}
    for cmd in (
        ["bench.bench_parser", "--frames", str(frames), "--repeat", "3", "--json"],
        ["bench.bench_engine", "--seconds", "0.5", "--json"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", *cmd], capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=300
        )
        if proc.returncode:
            out[f"{cmd[0]} failed"] = float("nan")
            continue
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about one minute: one round, shorter runs")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md (default unless --quick)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    ap.add_argument(
        "--only", default="a,b,c,d,e,f,g,h,i,j,k,l,m", help="comma-separated workloads to run (a..m)"
    )
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated paths to measure")
    ap.add_argument("--out", type=Path, default=None, help="directory for results.json, profiles, logs")
    ap.add_argument(
        "--sidecar-root",
        type=Path,
        default=ROOT,
        help="run the sidecar from another checkout (A/B comparison)",
    )
    args = ap.parse_args(argv)
    settings = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    write = (args.write or not args.quick) and not args.no_write
    workdir = args.out or Path(tempfile.mkdtemp(prefix="kpi-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    info = machine()
    info["git"] = code_version(args.sidecar_root.resolve())
    info["background_cpu_percent"] = background_cpu()
    info["loadavg_start"] = os.getloadavg()
    say(
        f"machine: {info['nproc']} x {info['cpu_model']}, {info['memory_gb']} GB; "
        f"background CPU {info['background_cpu_percent']:.0f} %, load {info['loadavg_start'][0]:.2f}"
    )
    say(f"workdir (logs, profiles, results.json): {workdir}")
    topo = Topology(workdir, args.sidecar_root.resolve())
    assert topo.sidecar is not None
    say(
        f"hub {topo.hub.addr}, leaf {topo.addr('leaf')}, sidecar {topo.sidecar.addr} (pid {topo.sidecar.pid})"
    )
    watcher = LevelWatcher(topo)
    bench = Bench(topo, settings, workdir, say)
    bench.paths = tuple(args.paths.split(","))
    bench.watcher = watcher
    results: dict[str, Any] = bench.results
    try:
        results["sidecar_rss_idle_mb"] = psutil.Process(topo.sidecar.pid).memory_info().rss / 1_048_576
        if "a" in only:
            say("(a) raw pipelined PUBs, counted on the hub")
            bench.raw_throughput(128)
            bench.raw_throughput(1024)
        if "b" in only:
            say("(b) nats-py application publishing as fast as it can")
            bench.natspy()
        if "f" in only:
            say("(f) raw PUBs on the hub, counted by a subscriber behind each path")
            bench.raw_delivery(128)
        if "h" in only:
            say("(h) HPUB with KPI-Priority: medium at level none, counted on the hub")
            bench.hpub_none()
        if "i" in only:
            say("(i) HTTP ingest, 4 clients, NDJSON batches of 1,000 (direct: a nats-py application)")
            bench.http_ingest()
        if "j" in only:
            say("(j) critical messages over JetStream (direct: a raw client sending Nats-Msg-Id)")
            bench.jetstream_critical()
        if "k" in only:
            say("(k) 50 subscribers of one subject behind each path, raw publisher on the hub")
            bench.fanout()
        if "l" in only:
            say("(l) memory per queued message, and after the queue drains (hub frozen, then resumed)")
            bench.queue_memory()
        if "g" in only:
            say(
                "(g) intake while shedding: KPI-Priority mix 40/40/15/5, sidecar held at high, then critical,"
                " then requests at critical"
            )
            bench.shedding("high")
            bench.shedding("critical")
            bench.shedding("critical", requests=True)
        if "m" in only:
            say("(m) a raw 128 B flood through a sidecar whose rate ceiling is 200,000 msg/s")
            bench.ceiling()
        if "c" in only:
            say(f"(c) request-reply at {settings.rr_rate:,.0f} req/s")
            bench.request_reply()
        if "d" in only or "e" in only:
            say("restarting the sidecar: (d) and (e) measure memory without the peaks of (a) and (b)")
            bench.fresh_sidecar()
        if "d" in only:
            say(f"(d) CPU and RSS at {settings.steady_rate:,.0f} msg/s")
            bench.steady()
        if "e" in only:
            say(f"(e) sidecar RSS with {settings.distinct:,} distinct subjects")
            bench.distinct_subjects()
        watcher.stop()
        results["level"] = {
            "highest": watcher.highest,
            "at": watcher.highest_at,
            "poll_errors": watcher.errors,
            "log": [line for line in topo.sidecar.level_changes() if line not in bench.expected_changes],
        }
        profiled = tuple(name for name, letter in PROFILED if letter in only)
        if not args.no_profile and profiled:
            say(f"profile: py-spy on the sidecar during {', '.join(profiled)}")
            bench.profile(profiled)
        say("micro-benchmarks: parser and engine")
        results["micro"] = micro(settings.micro_frames, args.sidecar_root.resolve())
    finally:
        watcher.stop()
        topo.stop()
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_s"] = round(time.monotonic() - started)
    results["machine"] = info
    results["settings"] = {**asdict(settings), "quick": args.quick}
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    summary = report.summarize(results)
    table = report.render_markdown(summary, results)
    print()
    print(table)
    if write:
        doc = ROOT / "docs" / "benchmarks.md"
        report.write_doc(doc, table)
        say(f"wrote {doc}")
    say(f"done in {info['elapsed_s']} s; raw results in {workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
