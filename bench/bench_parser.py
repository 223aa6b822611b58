"""Micro-benchmark of the NATS client parser: 1M `PUB foo.bar 128` frames fed in 64 KiB chunks.

The sidecar runs the client parser in batch mode (runs of plain PUBs become one PubRun), with the C
scanner when it is built: both are measured next to the op-per-frame mode, with and without the scanner.

Run: .venv/bin/python bench/bench_parser.py [--frames N] [--chunk BYTES] [--repeat R] [--json]
(`make bench` runs it too, through bench.run.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Runnable as a plain script from anywhere: make the repository root importable.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.nats.protocol import ClientParser, PubRun, ServerParser, encode_msg, encode_pub, scan_pubs


def batch_parser(scan: object) -> type:
    """A ClientParser factory in batch mode, as ClientConnection uses it, with the given scanner."""

    def make() -> ClientParser:
        parser = ClientParser(scan=scan)  # type: ignore[arg-type]
        parser.batch = True
        return parser

    return make  # type: ignore[return-value]


def chunked(stream: bytes, chunk: int) -> list[bytes]:
    """Split the stream into fixed-size reads, as a socket would deliver them."""
    return [stream[i : i + chunk] for i in range(0, len(stream), chunk)]


def bench(
    name: str, parser_factory: type, stream: bytes, frames: int, chunk: int, repeat: int, quiet: bool = False
) -> float:
    """Feed a stream of `frames` frames; print and return the best ops/s over `repeat` runs."""
    reads = chunked(stream, chunk)
    best = 0.0
    for _ in range(repeat):
        parser = parser_factory()
        count = 0
        start = time.perf_counter()
        for data in reads:
            for op in parser.feed_data(data):
                count += op.n if type(op) is PubRun else 1
        elapsed = time.perf_counter() - start
        assert count == frames, (count, frames)
        best = max(best, frames / elapsed)
    if not quiet:
        print(f"{name:<44} {best:>12,.0f} ops/s")
    return best


def run(frames: int, chunk: int = 64 * 1024, repeat: int = 5, quiet: bool = False) -> dict[str, float]:
    """Run the three parser benchmarks; ops/s keyed by name."""
    payload = b"x" * 128
    n = frames
    out = {}
    pubs = encode_pub("foo.bar", None, payload) * n
    out["ClientParser PUB 128 B"] = bench(
        "ClientParser PUB foo.bar 128", ClientParser, pubs, n, chunk, repeat, quiet
    )
    out["ClientParser batch PUB 128 B, Python"] = bench(
        "ClientParser batch, Python loop", batch_parser(None), pubs, n, chunk, repeat, quiet
    )
    if scan_pubs is not None:
        out["ClientParser batch PUB 128 B, C scanner"] = bench(
            "ClientParser batch, C scanner", batch_parser(scan_pubs), pubs, n, chunk, repeat, quiet
        )
    # Requests: every reply subject is a fresh inbox, so no control line repeats.
    requests = b"".join(encode_pub("svc.echo", f"_INBOX.k9Fq3vT7aX.{i}", payload) for i in range(n // 4))
    out["ClientParser PUB with unique reply"] = bench(
        "ClientParser PUB svc.echo _INBOX.<unique> 128",
        ClientParser,
        requests,
        n // 4,
        chunk,
        repeat,
        quiet,
    )
    out["ServerParser MSG 128 B"] = bench(
        "ServerParser MSG foo.bar 1 128",
        ServerParser,
        encode_msg(b"foo.bar", b"1", None, -1, payload) * n,
        n,
        chunk,
        repeat,
        quiet,
    )
    return out


def main() -> None:
    """Parse the command line and run the benchmarks."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=64 * 1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = ap.parse_args()
    results = run(args.frames, args.chunk, args.repeat, quiet=args.json)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
