"""Deliveries to applications: the C router (plain MSGs written straight into the application's buffer)
and the per-message path (echo=false, max counts, headers) must keep nats-server's order and counts."""

from __future__ import annotations

import re
import socket
import time

from tests.conftest import NatsServer, SidecarProcess

MSG_LINE = re.compile(rb"MSG (\S+) (\S+) (\d+)\r\n")


class RawClient:
    """A NATS connection on a plain socket, reading MSG frames in wire order."""

    def __init__(self, port: int, connect: bytes = b'{"verbose":false,"pedantic":false}') -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self._until(b"\r\n")  # INFO
        self.buf = b""
        self.sock.sendall(b"CONNECT " + connect + b"\r\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ping(self) -> None:
        self.sock.sendall(b"PING\r\n")
        self._until(b"PONG\r\n")
        self.buf = self.buf.replace(b"PONG\r\n", b"", 1)

    def _until(self, marker: bytes) -> None:
        while marker not in self.buf:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data

    def messages(self, count: int, timeout: float = 10.0) -> list[tuple[bytes, bytes, bytes]]:
        """The next `count` MSGs as (subject, sid, payload), in the order they came on the wire."""
        out: list[tuple[bytes, bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            m = MSG_LINE.match(self.buf)
            if m is not None:
                size = int(m.group(3))
                end = m.end() + size + 2
                if len(self.buf) >= end:
                    out.append((m.group(1), m.group(2), self.buf[m.end() : end - 2]))
                    self.buf = self.buf[end:]
                    continue
            else:
                assert not self.buf.startswith(b"MSG"), self.buf[:100]
                if self.buf.startswith(b"PING\r\n"):
                    self.buf = self.buf[6:]
                    self.sock.sendall(b"PONG\r\n")
                    continue
            assert time.monotonic() < deadline, f"got {len(out)} of {count}"
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data
        return out

    def nothing_more(self, wait: float = 0.5) -> bool:
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return not self.buf
        return not (self.buf + data)

    def close(self) -> None:
        self.sock.close()


def publish(server: NatsServer, frames: bytes) -> None:
    pub = RawClient(server.port)
    pub.send(frames)
    pub.ping()
    pub.close()


def test_order_across_routed_and_per_message_subscriptions(
    nats_server: NatsServer, sidecar: SidecarProcess
) -> None:
    app = RawClient(sidecar.ports["nats"])
    # sid 1: plain, routed in C; sid 2: a max count, per message; sid 3: headers would not matter.
    app.send(b"SUB ord.a 1\r\nSUB ord.b 2\r\nUNSUB 2 100000\r\nSUB ord.c 3\r\n")
    app.ping()
    app.ping()
    n = 3000
    subjects = [b"ord.a", b"ord.b", b"ord.c", b"ord.a"]
    frames = b"".join(b"PUB %s %d\r\n%d\r\n" % (subjects[i % 4], len(b"%d" % i), i) for i in range(n))
    publish(nats_server, frames)
    got = app.messages(n)
    assert [int(p) for _, _, p in got] == list(range(n))
    sid_of = {b"ord.a": b"1", b"ord.b": b"2", b"ord.c": b"3"}
    assert all(sid == sid_of[subject] for subject, sid, _ in got)
    assert app.nothing_more()
    app.close()


def test_a_max_count_set_while_messages_are_routed_is_exact(
    nats_server: NatsServer, sidecar: SidecarProcess
) -> None:
    app = RawClient(sidecar.ports["nats"])
    app.send(b"SUB cnt.x 9\r\n")
    app.ping()
    app.ping()
    publish(nats_server, b"PUB cnt.x 1\r\na\r\n" * 500)
    assert len(app.messages(500)) == 500
    app.send(b"UNSUB 9 650\r\n")  # 650 in all: 150 more
    app.ping()
    publish(nats_server, b"PUB cnt.x 1\r\nb\r\n" * 500)
    assert [p for _, _, p in app.messages(150)] == [b"b"] * 150
    assert app.nothing_more()
    app.close()


def test_echo_false_and_echo_true_applications_side_by_side(sidecar: SidecarProcess) -> None:
    quiet = RawClient(sidecar.ports["nats"], b'{"verbose":false,"pedantic":false,"echo":false}')
    loud = RawClient(sidecar.ports["nats"])
    for app in (quiet, loud):
        app.send(b"SUB echo.t 1\r\n")
        app.ping()
        app.ping()
    quiet.send(b"".join(b"PUB echo.t 3\r\nq%02d\r\n" % i for i in range(50)))
    loud.send(b"".join(b"PUB echo.t 3\r\nl%02d\r\n" % i for i in range(50)))
    quiet.ping()
    loud.ping()
    # The echo=false application gets only the other's; the other gets both, each in its sender's order.
    got_quiet = [p for _, _, p in quiet.messages(50)]
    assert got_quiet == [b"l%02d" % i for i in range(50)]
    got_loud = [p for _, _, p in loud.messages(100)]
    assert [p for p in got_loud if p.startswith(b"q")] == [b"q%02d" % i for i in range(50)]
    assert [p for p in got_loud if p.startswith(b"l")] == [b"l%02d" % i for i in range(50)]
    assert quiet.nothing_more() and loud.nothing_more()
    quiet.close()
    loud.close()
