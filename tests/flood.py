"""A publisher at a fixed rate in its own process (raw PUB frames, no client library): the flood that holds
a sidecar at a degradation level while a test checks other traffic through it.

    python -m tests.flood HOST PORT SUBJECT RATE [PAYLOAD_BYTES]

It answers the server's PINGs, so the connection stays up for as long as the flood runs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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


if __name__ == "__main__":
    host, port, subject, rate, *rest = sys.argv[1:]
    main(host, int(port), subject, float(rate), *(int(r) for r in rest))
