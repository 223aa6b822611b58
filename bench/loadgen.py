"""Load generators and counters, each run as its own process by bench.run (one JSON line per event).

    python -m bench.loadgen sub        raw-socket subscriber that counts MSG frames of one subject
    python -m bench.loadgen pub        raw-socket publisher: pre-built frames, big writes, optional rate
    python -m bench.loadgen distinct   raw-socket publisher of one message to each of N distinct subjects
    python -m bench.loadgen natspy-pub a nats-py application publishing as fast as it can
    python -m bench.loadgen responder  nats-py responder (request-reply)
    python -m bench.loadgen requester  nats-py requester at a fixed rate, reports latencies

Every process prints `{"event": "ready"}` once it is set up and `{"event": "result", ...}` at the end.
Times are `time.monotonic()`, which is one clock for every process of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

CONNECT_FRAME = (
    b'CONNECT {"verbose":false,"pedantic":false,"lang":"bench","version":"0","protocol":1,'
    b'"headers":true,"no_responders":true}\r\nPING\r\n'
)
PING_FRAME = b"PING\r\n"
PONG_FRAME = b"PONG\r\n"
RECV_SIZE = 4 * 1024 * 1024
# Writes of about this size keep the publisher from being the bottleneck.
WRITE_SIZE = 256 * 1024


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout for the orchestrator."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def read_until(sock: socket.socket, marker: bytes, timeout: float, seen: bytes = b"") -> bytes:
    """Read until `marker` appears; returns everything read. Raises on -ERR, EOF or timeout."""
    sock.settimeout(timeout)
    data = seen
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed waiting for {marker!r}: {data[-200:]!r}")
        data += chunk
        if b"-ERR" in data:
            raise ConnectionError(f"server error: {data[data.find(b'-ERR') :][:200]!r}")
        # Keep only what a marker split across reads needs.
        if len(data) > 1 << 20:
            data = data[-4096:]
    sock.settimeout(None)
    return data


def raw_connect(addr: str, timeout: float = 10.0) -> socket.socket:
    """A NATS client connection on a plain socket: INFO read, CONNECT sent, PONG received."""
    sock = socket.create_connection(split_addr(addr), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    read_until(sock, b"\r\n", timeout)
    sock.sendall(CONNECT_FRAME)
    read_until(sock, PONG_FRAME, timeout)
    return sock


def pub_frame(subject: str, payload: bytes) -> bytes:
    return b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)


# ------------------------------------------------------------------------------------------- subscriber


class FrameCounter:
    """Counts occurrences of one byte pattern in a stream read in chunks, including across chunk edges."""

    __slots__ = ("count", "pattern", "tail")

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern
        self.count = 0
        self.tail = b""

    def feed(self, buf: bytearray, n: int) -> int:
        """Count the pattern in buf[:n]; return how many were found in this chunk."""
        pattern = self.pattern
        keep = len(pattern) - 1
        found = buf.count(pattern, 0, n)
        if self.tail:
            # Each side holds len-1 bytes, so any match here straddles the edge.
            found += (self.tail + bytes(buf[: min(n, keep)])).count(pattern)
        self.tail = bytes(buf[max(0, n - keep) : n]) if n >= keep else (self.tail + bytes(buf[:n]))[-keep:]
        self.count += found
        return found


def cmd_sub(args: argparse.Namespace) -> None:
    """Subscribe to data, probe and end subjects; count data frames until the end marker arrives."""
    sock = raw_connect(args.addr)
    sock.sendall(
        b"SUB %s 1\r\nSUB %s 2\r\nSUB %s 3\r\nPING\r\n"
        % (args.data.encode(), args.probe.encode(), args.end.encode())
    )
    read_until(sock, PONG_FRAME, 10.0)
    emit("ready")
    data = FrameCounter(b"MSG %s 1 " % args.data.encode())
    probe = FrameCounter(b"MSG %s 2 " % args.probe.encode())
    end = FrameCounter(b"MSG %s 3 " % args.end.encode())
    buf = bytearray(RECV_SIZE)
    recv_into = sock.recv_into
    monotonic = time.monotonic
    t_first = t_last = 0.0
    first_chunk = 0
    closed = False
    nbytes = 0
    probed = False
    deadline = monotonic() + args.timeout
    sock.settimeout(1.0)
    while True:
        try:
            n = recv_into(buf)
        except TimeoutError:
            if monotonic() > deadline:
                break
            continue
        now = monotonic()
        if n == 0:
            closed = True
            break
        nbytes += n
        got = data.feed(buf, n)
        if got:
            if not t_first:
                t_first = now
                first_chunk = got
            t_last = now
        if not probed and probe.feed(buf, n):
            probed = True
            emit("probe")
        if end.feed(buf, n):
            break
        if now > deadline:
            break
    emit(
        "result",
        count=data.count,
        first_chunk=first_chunk,
        t_first=t_first,
        t_last=t_last,
        bytes=nbytes,
        closed=closed,
        ended=end.count > 0,
    )


# ------------------------------------------------------------------------------------------- publishers


def finish(sock: socket.socket, end_subject: str | None) -> float:
    """Send the end marker and a PING; return when the PONG is back (every publish taken in charge)."""
    tail = pub_frame(end_subject, b"") if end_subject else b""
    sock.sendall(tail + PING_FRAME)
    read_until(sock, PONG_FRAME, 120.0)
    return time.monotonic()


def cmd_pub(args: argparse.Namespace) -> None:
    """Publish `size`-byte messages for `duration` seconds, as fast as possible or at `rate` msg/s."""
    sock = raw_connect(args.addr)
    frame = pub_frame(args.subject, b"x" * args.size)
    emit("ready")
    monotonic = time.monotonic
    sendall = sock.sendall
    sent = 0
    t_start = monotonic()
    deadline = t_start + args.duration
    if args.rate <= 0:
        per_write = max(1, WRITE_SIZE // len(frame))
        chunk = frame * per_write
        while monotonic() < deadline:
            sendall(chunk)
            sent += per_write
    else:
        tick = 0.005
        while True:
            now = monotonic()
            if now >= deadline:
                break
            due = int((now - t_start) * args.rate) - sent
            if due > 0:
                sendall(frame * due)
                sent += due
            time.sleep(tick)
    t_sent = monotonic()
    t_pong = finish(sock, args.end)
    emit("result", sent=sent, t_start=t_start, t_sent=t_sent, t_pong=t_pong)


def cmd_distinct(args: argparse.Namespace) -> None:
    """One `size`-byte message to each of `count` subjects `<prefix>.<i>` (or `count` to one subject)."""
    sock = raw_connect(args.addr)
    payload = b"x" * args.size
    emit("ready")
    t_start = time.monotonic()
    batch: list[bytes] = []
    for i in range(args.count):
        subject = args.prefix if args.same else f"{args.prefix}.{i}"
        batch.append(pub_frame(subject, payload))
        if len(batch) == 2000:
            sock.sendall(b"".join(batch))
            batch = []
    if batch:
        sock.sendall(b"".join(batch))
    t_pong = finish(sock, None)
    emit("result", sent=args.count, elapsed=t_pong - t_start)


def cmd_natspy_pub(args: argparse.Namespace) -> None:
    """A nats-py application: `await nc.publish()` in a loop for `duration` seconds, then flush."""
    import nats

    async def main() -> None:
        nc = await nats.connect(args.url, allow_reconnect=False, connect_timeout=5)
        payload = b"x" * args.size
        subject = args.subject
        publish = nc.publish
        emit("ready")
        perf = time.perf_counter
        sent = 0
        t_start = time.monotonic()
        start = perf()
        deadline = start + args.duration
        while True:
            for _ in range(1000):
                await publish(subject, payload)
            sent += 1000
            if perf() >= deadline:
                break
        await nc.flush(timeout=120)
        elapsed = perf() - start
        await nc.publish(args.end, b"")
        await nc.flush(timeout=120)
        await nc.close()
        emit("result", sent=sent, elapsed=elapsed, rate=sent / elapsed, t_start=t_start)

    run_loop(main(), args.uvloop)


# ------------------------------------------------------------------------------------------ request-reply


def cmd_responder(args: argparse.Namespace) -> None:
    """Answer every request on `subject` with its own payload until stdin closes."""
    import nats

    async def main() -> None:
        nc = await nats.connect(args.url, allow_reconnect=False, connect_timeout=5)

        async def answer(msg: Any) -> None:
            await nc.publish(msg.reply, msg.data)

        await nc.subscribe(args.subject, cb=answer)
        await nc.flush()
        await nc.flush()
        emit("ready")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await nc.close()

    run_loop(main(), uvloop=True)


def cmd_requester(args: argparse.Namespace) -> None:
    """Requests at a fixed rate (open loop: a late reply does not delay the next request)."""
    import nats

    async def main() -> None:
        nc = await nats.connect(args.url, allow_reconnect=False, connect_timeout=5)
        payload = b"x" * args.size
        loop = asyncio.get_running_loop()
        # Warm up: interest may still be propagating (leaf node), and the first requests pay for setup.
        warm_start = loop.time()
        good = 0
        while good < args.warmup and loop.time() - warm_start < 20:
            try:
                await nc.request(args.subject, payload, timeout=0.5)
                good += 1
            except Exception:
                good = 0
                await asyncio.sleep(0.05)
        emit("ready", warmup_s=loop.time() - warm_start)
        latencies: list[float] = []
        errors = 0
        perf = time.perf_counter

        async def one() -> None:
            nonlocal errors
            t0 = perf()
            try:
                await nc.request(args.subject, payload, timeout=2)
            except Exception:
                errors += 1
                return
            latencies.append((perf() - t0) * 1e6)

        count = int(args.rate * args.duration)
        interval = 1.0 / args.rate
        tasks = []
        start = loop.time() + 0.01
        for i in range(count):
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        achieved = count / (loop.time() - start)
        await nc.close()
        emit("result", latencies_us=[round(x, 1) for x in latencies], errors=errors, rate=achieved)

    run_loop(main(), uvloop=True)


def run_loop(coro: Any, uvloop: bool) -> None:
    if uvloop:
        try:
            import uvloop as _uvloop

            _uvloop.run(coro)
            return
        except ImportError:
            pass
    asyncio.run(coro)


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sub")
    p.add_argument("--addr", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--probe", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_sub)

    p = sub.add_parser("pub")
    p.add_argument("--addr", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=0.0, help="msg/s; 0 = as fast as possible")
    p.add_argument("--end", default=None)
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser("distinct")
    p.add_argument("--addr", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--same", action="store_true", help="every message to <prefix> itself (baseline)")
    p.set_defaults(func=cmd_distinct)

    p = sub.add_parser("natspy-pub")
    p.add_argument("--url", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--end", required=True)
    p.add_argument("--uvloop", action="store_true")
    p.set_defaults(func=cmd_natspy_pub)

    p = sub.add_parser("responder")
    p.add_argument("--url", required=True)
    p.add_argument("--subject", required=True)
    p.set_defaults(func=cmd_responder)

    p = sub.add_parser("requester")
    p.add_argument("--url", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=200)
    p.set_defaults(func=cmd_requester)
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
