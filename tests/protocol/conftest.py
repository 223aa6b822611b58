"""A real nats-server 2.9 on a free port, for the conformance tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port

NATS_SERVER = os.environ.get("NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"


def wait_until_accepting(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Block until the server accepts TCP connections, failing fast if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"nats-server exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"nats-server did not accept connections on port {port} within {timeout}s")


@pytest.fixture(scope="session")
def nats_server() -> Iterator[int]:
    """Start `nats-server -a 127.0.0.1 -p PORT` with default limits; yield PORT; kill it at teardown."""
    if not os.path.exists(NATS_SERVER):
        pytest.fail(f"nats-server binary not found at {NATS_SERVER} (set NATS_SERVER)")
    port = free_port()
    proc = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_accepting(port, proc)
        yield port
    finally:
        proc.kill()
        proc.wait()
