"""Load generators and counters, each run as its own process by bench.run (one JSON line per event).

    python -m bench.loadgen sub        raw-socket subscriber that counts MSG frames of one subject
    python -m bench.loadgen pub        raw-socket publisher: pre-built frames, big writes, optional rate
    python -m bench.loadgen distinct   raw-socket publisher of one message to each of N distinct subjects
    python -m bench.loadgen natspy-pub a nats-py application publishing as fast as it can
    python -m bench.loadgen multisub   N raw-socket subscribers of one subject in one process, counted
    python -m bench.loadgen http-pub   HTTP ingest clients posting NDJSON batches as fast as they can
    python -m bench.loadgen js-stream  create (or delete) a JetStream stream on a server
    python -m bench.loadgen responder  nats-py responder (request-reply)
    python -m bench.loadgen requester  nats-py requester at a fixed rate, reports latencies

Every process prints `{"event": "ready"}` once it is set up and `{"event": "result", ...}` at the end.
Times are `time.monotonic()`, which is one clock for every process of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def pub_frame(subject: str, payload: bytes, reply: str | None = None) -> bytes:
    head = subject if reply is None else f"{subject} {reply}"
    return b"PUB %s %d\r\n%s\r\n" % (head.encode(), len(payload), payload)


def hpub_frame(
    subject: str, headers: list[tuple[str, str]], payload: bytes, reply: str | None = None
) -> bytes:
    """An HPUB frame with these headers (NATS/1.0 header block), and a reply subject when given."""
    block = b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers) + b"\r\n"
    head = subject if reply is None else f"{subject} {reply}"
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (
        head.encode(),
        len(block),
        len(block) + len(payload),
        block,
        payload,
    )


# The priority mix of the shedding workloads: 40 % low, 40 % medium, 15 % high, 5 % critical, spread
# evenly over each block of 20 frames (so that any run of frames holds about the same mix).
MIX_BLOCK: tuple[str, ...] = (
    "low", "medium", "low", "medium", "high", "low", "medium", "low", "medium", "high",
    "low", "medium", "critical", "low", "medium", "high", "low", "medium", "low", "medium",
)  # fmt: skip


def publish_frames(subject: str, size: int, kind: str, reply: str | None = None) -> list[bytes]:
    """The repeating frames of a publisher: plain PUBs, HPUBs with `KPI-Priority: <kind>`, or the mix;
    requests when `reply` is given."""
    payload = b"x" * size
    if kind == "plain":
        return [pub_frame(subject, payload, reply)]
    if kind == "mix":
        return [hpub_frame(subject, [("KPI-Priority", p)], payload, reply) for p in MIX_BLOCK]
    return [hpub_frame(subject, [("KPI-Priority", kind)], payload, reply)]


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


def finish(sock: socket.socket, end_subject: str | None, critical: bool = False) -> float:
    """Send the end marker and a PING; return when the PONG is back (every publish taken in charge).
    `critical`: the marker says `KPI-Priority: critical`, so that a shedding sidecar keeps it."""
    tail = b""
    if end_subject and critical:
        tail = hpub_frame(end_subject, [("KPI-Priority", "critical")], b"")
    elif end_subject:
        tail = pub_frame(end_subject, b"")
    sock.sendall(tail + PING_FRAME)
    read_until(sock, PONG_FRAME, 120.0)
    return time.monotonic()


def cmd_pub(args: argparse.Namespace) -> None:
    """Publish `size`-byte messages for `duration` seconds, as fast as possible or at `rate` msg/s."""
    sock = raw_connect(args.addr)
    if args.msg_id:
        cmd_pub_ids(args, sock)
        return
    frames = publish_frames(args.subject, args.size, args.headers, args.reply)
    frame = b"".join(frames)
    emit("ready")
    monotonic = time.monotonic
    sendall = sock.sendall
    sent = 0
    t_start = monotonic()
    deadline = t_start + args.duration
    if args.rate <= 0:
        per_write = max(1, WRITE_SIZE // len(frame))
        chunk = frame * per_write
        per_write *= len(frames)
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
    t_pong = finish(sock, args.end, critical=args.headers != "plain" or args.end_critical)
    emit("result", sent=sent, t_start=t_start, t_sent=t_sent, t_pong=t_pong)


def cmd_pub_ids(args: argparse.Namespace, sock: socket.socket) -> None:
    """`count` HPUBs, each with its own `Nats-Msg-Id` (what a JetStream client sends), as fast as possible."""
    payload = b"x" * args.size
    frames = [
        hpub_frame(args.subject, [("Nats-Msg-Id", f"{args.msg_id}-{i}")], payload) for i in range(args.count)
    ]
    emit("ready")
    t_start = time.monotonic()
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        batch.append(frame)
        size += len(frame)
        if size >= WRITE_SIZE:
            sock.sendall(b"".join(batch))
            batch, size = [], 0
    if batch:
        sock.sendall(b"".join(batch))
    t_sent = time.monotonic()
    t_pong = finish(sock, args.end)
    emit("result", sent=args.count, t_start=t_start, t_sent=t_sent, t_pong=t_pong)


def cmd_pub_count(args: argparse.Namespace) -> None:
    """`count` plain PUBs as fast as possible (the same frames as `pub`, a fixed number of them)."""
    sock = raw_connect(args.addr)
    frame = pub_frame(args.subject, b"x" * args.size)
    emit("ready")
    t_start = time.monotonic()
    per_write = max(1, WRITE_SIZE // len(frame))
    left = args.count
    while left > 0:
        n = min(per_write, left)
        sock.sendall(frame * n)
        left -= n
    t_sent = time.monotonic()
    t_pong = finish(sock, args.end)
    emit("result", sent=args.count, t_start=t_start, t_sent=t_sent, t_pong=t_pong)


def cmd_multisub(args: argparse.Namespace) -> None:
    """`conns` subscriber connections to one data subject in one process; counts every delivery."""
    import selectors

    socks = [raw_connect(args.addr) for _ in range(args.conns)]
    sel = selectors.DefaultSelector()
    counters = []
    for sock in socks:
        sock.sendall(
            b"SUB %s 1\r\nSUB %s 2\r\nSUB %s 3\r\nPING\r\n"
            % (args.data.encode(), args.probe.encode(), args.end.encode())
        )
        read_until(sock, PONG_FRAME, 10.0)
        sock.setblocking(False)
        entry = [
            FrameCounter(b"MSG %s 1 " % args.data.encode()),
            FrameCounter(b"MSG %s 2 " % args.probe.encode()),
            FrameCounter(b"MSG %s 3 " % args.end.encode()),
        ]
        counters.append(entry)
        sel.register(sock, selectors.EVENT_READ, entry)
    emit("ready")
    buf = bytearray(RECV_SIZE)
    monotonic = time.monotonic
    t_first = t_last = 0.0
    first_chunk = 0
    probed: set[int] = set()
    ended: set[int] = set()
    deadline = monotonic() + args.timeout
    while len(ended) < len(socks) and monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj
            data, probe, end = key.data
            try:
                n = sock.recv_into(buf)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if n == 0:
                sel.unregister(sock)
                ended.add(id(sock))
                continue
            now = monotonic()
            got = data.feed(buf, n)
            if got:
                if not t_first:
                    t_first, first_chunk = now, got
                t_last = now
            if id(sock) not in probed and probe.feed(buf, n):
                probed.add(id(sock))
                if len(probed) == len(socks):
                    emit("probe")
            if end.feed(buf, n):
                ended.add(id(sock))
    total = sum(entry[0].count for entry in counters)
    emit(
        "result",
        count=total,
        first_chunk=first_chunk,
        t_first=t_first,
        t_last=t_last,
        ended=len(ended) == len(socks),
        conns=len(socks),
    )


def cmd_http_pub(args: argparse.Namespace) -> None:
    """`clients` HTTP clients, each posting NDJSON batches of `batch` messages in a loop for `duration` s.

    The rate is the messages the sidecar accepted (202, result not refused) over the time to the last
    answer (forwarded, queued or spooled); each batch's round trip is reported for the p50 / p99."""
    import aiohttp
    import msgspec

    decode = msgspec.json.decode  # what an application that posts batches would parse answers with
    line = json.dumps({"subject": args.subject, "data": "x" * args.size}).encode() + b"\n"
    body = line * args.batch

    async def main() -> None:
        accepted = 0
        refused = 0
        latencies: list[float] = []
        perf = time.perf_counter
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(
            connector=connector, headers={"Content-Type": "application/x-ndjson"}
        ) as session:
            url = f"{args.url}/publish"
            warm = json.dumps({"subject": args.subject + ".warm", "data": ""}).encode()
            async with session.post(url, data=warm) as resp:  # warm up, off the counted subject
                await resp.read()
            emit("ready")
            t_start = time.monotonic()
            start = perf()
            deadline = start + args.duration

            async def client() -> None:
                nonlocal accepted, refused
                while perf() < deadline:
                    t0 = perf()
                    async with session.post(url, data=body) as resp:
                        answer = decode(await resp.read())
                    latencies.append((perf() - t0) * 1e6)
                    summary = answer.get("data", {}).get("summary", {})
                    good = sum(v for k, v in summary.items() if k in ("forwarded", "queued", "spooled"))
                    refused += args.batch - good
                    accepted += good

            await asyncio.gather(*(client() for _ in range(args.clients)))
            elapsed = perf() - start
            async with session.post(f"{url}/{args.end}", data=b"") as resp:  # the subscriber's end marker
                await resp.read()
        emit(
            "result",
            sent=accepted,
            refused=refused,
            elapsed=elapsed,
            rate=accepted / elapsed,
            t_start=t_start,
            latencies_us=sorted(round(x, 1) for x in latencies),
        )

    run_loop(main(), args.uvloop)


def cmd_js_stream(args: argparse.Namespace) -> None:
    """Create (`--delete`: delete) stream `name` on `subjects`, in memory or on file, with nats-py."""
    import nats

    async def main() -> None:
        nc = await nats.connect(args.url, allow_reconnect=False, connect_timeout=5)
        js = nc.jetstream()
        if args.delete:
            with contextlib.suppress(Exception):
                await js.delete_stream(args.name)
        else:
            await js.add_stream(name=args.name, subjects=args.subjects.split(","), storage=args.storage)
        await nc.close()
        emit("result")

    asyncio.run(main())


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
    p.add_argument(
        "--headers",
        default="plain",
        help="plain PUBs, or HPUBs with KPI-Priority: low|medium|high|critical|mix",
    )
    p.add_argument("--reply", default=None, help="requests: every publish with this reply subject")
    p.add_argument("--end-critical", action="store_true", help="the end marker is critical (never shed)")
    p.add_argument("--msg-id", default="", help="HPUBs with Nats-Msg-Id <this>-<i>, --count of them")
    p.add_argument("--count", type=int, default=100_000)
    p.set_defaults(func=cmd_pub)

    p = sub.add_parser("pub-count")
    p.add_argument("--addr", required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--end", default=None)
    p.set_defaults(func=cmd_pub_count)

    p = sub.add_parser("multisub")
    p.add_argument("--addr", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--probe", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_multisub)

    p = sub.add_parser("http-pub")
    p.add_argument("--url", required=True, help="the sidecar's HTTP ingest base URL")
    p.add_argument("--subject", required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--end", required=True)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--uvloop", action="store_true")
    p.set_defaults(func=cmd_http_pub)

    p = sub.add_parser("js-stream")
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--subjects", default="")
    p.add_argument("--storage", default="file", choices=("file", "memory"))
    p.add_argument("--delete", action="store_true")
    p.set_defaults(func=cmd_js_stream)

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
