"""A publisher at a fixed rate in its own process (raw PUB frames, no client library): the flood that holds
a sidecar at a degradation level while a test checks other traffic through it.

    python -m tests.flood HOST PORT SUBJECT RATE [PAYLOAD_BYTES]

It answers the server's PINGs, so the connection stays up for as long as the flood runs.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.conftest import SidecarProcess

ROOT = Path(__file__).resolve().parent.parent
TICK_S = 0.01


def _answer_pings(sock: socket.socket) -> None:
    buf = b""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        buf += data
        while b"\r\n" in buf:
            line, _, buf = buf.partition(b"\r\n")
            if line == b"PING":
                sock.sendall(b"PONG\r\n")


def main(host: str, port: int, subject: str, rate: float, payload: int = 64) -> None:
    sock = socket.create_connection((host, port))
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
    threading.Thread(target=_answer_pings, args=(sock,), daemon=True).start()
    frame = f"PUB {subject} {payload}\r\n".encode() + b"x" * payload + b"\r\n"
    owed = 0.0
    next_at = time.monotonic()
    while True:
        owed += rate * TICK_S
        count = int(owed)
        owed -= count
        if count:
            sock.sendall(frame * count)
        next_at += TICK_S
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Flood:
    """`with Flood(port, subject, rate):` runs the flood in a subprocess for the duration of the block."""

    def __init__(self, port: int, subject: str, rate: float, payload: int = 64) -> None:
        self.args = ["127.0.0.1", str(port), subject, str(rate), str(payload)]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Flood:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.flood", *self.args], cwd=ROOT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# Flood rates that hold the publish-rate signal of the seed's configuration (maxPublishRate 1000) in a
# level's band (150-200 %: high, >= 200 %: critical).
FLOODS = {"high": 1750, "critical": 3000}


def level_of(proc: SidecarProcess) -> str:
    return proc.status()["degradationLevel"]


@contextlib.contextmanager
def flood_at(proc: SidecarProcess, level: str | None, held: bool = True) -> Iterator[None]:
    """Hold the sidecar at `level` with a flood on an unrelated subject (nothing when level is None);
    `held` False: the flood brings it there first, then the block's own traffic may raise it further."""
    if level is None:
        yield
        return
    with Flood(proc.ports["nats"], "flood.bulk", FLOODS[level]):
        deadline = time.monotonic() + 15
        while level_of(proc) != level:
            assert time.monotonic() < deadline, f"level {level_of(proc)}, wanted {level}"
            time.sleep(0.1)
        yield
        assert not held or level_of(proc) == level, "the flood no longer held the level"


if __name__ == "__main__":
    host, port, subject, rate, *rest = sys.argv[1:]
    main(host, int(port), subject, float(rate), *(int(r) for r in rest))
