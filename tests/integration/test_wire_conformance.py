"""Raw bytes in, raw bytes out: the sidecar must answer exactly as nats-server does."""

from __future__ import annotations

import os
import socket
import time
import urllib.request

import pytest

from tests.conftest import SidecarProcess, sidecar_config


def exchange(port: int, data: bytes, *, settle: float = 0.4) -> tuple[bytes, bool]:
    """Send `data` after the INFO line; return everything received after INFO and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "closed before INFO"
            buf += chunk
        info, _, rest = buf.partition(b"\r\n")
        assert info.startswith(b"INFO {")
        sock.sendall(data)
        sock.settimeout(0.05)
        out = rest
        closed = False
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
        return out, closed


CASES = {
    "verbose_ok_and_pong": b'CONNECT {"verbose":true}\r\nPING\r\n',
    "lowercase_ops": b"connect {}\r\nping\r\nsub a 1\r\nunsub 1\r\nping\r\n",
    "unknown_op": b"CONNECT {}\r\nFOO bar\r\n",
    "payload_too_big": b"CONNECT {}\r\nPUB big 2000000\r\n",
    "control_line_too_long": b"CONNECT {}\r\nPUB " + b"a" * 5000 + b" 1\r\nx\r\n",
    "pedantic_wildcard_publish": b'CONNECT {"pedantic":true}\r\nPUB foo.* 1\r\na\r\nPING\r\n',
    "pedantic_empty_token": b'CONNECT {"pedantic":true,"verbose":true}\r\nPUB foo..bar 1\r\na\r\nPING\r\n',
    "verbose_sub_pub_echo": b'CONNECT {"verbose":true}\r\nSUB x 1\r\nPUB x 1\r\na\r\nPING\r\n',
    "verbose_unsub": b'CONNECT {"verbose":true}\r\nSUB x 1\r\nUNSUB 1\r\nUNSUB 1 5\r\nPING\r\n',
    "no_echo": b'CONNECT {"verbose":false,"echo":false}\r\nSUB e 1\r\nPUB e 1\r\na\r\nPING\r\n',
    "echo_default": b'CONNECT {"verbose":false}\r\nSUB e 1\r\nPUB e 1\r\na\r\nPING\r\n',
    "hpub_to_self": (
        b'CONNECT {"headers":true,"verbose":false}\r\nSUB y 9\r\n'
        b"HPUB y 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n"
    ),
    "no_headers_client_gets_plain_msg": (
        b'CONNECT {"verbose":false}\r\nSUB z 3\r\nHPUB z 16 18\r\nNATS/1.0\r\nA:b\r\n\r\nhi\r\nPING\r\n'
    ),
    "unsub_unknown_sid": b"CONNECT {}\r\nUNSUB 99\r\nPING\r\n",
    "pub_bad_args": b"CONNECT {}\r\nPUB a b c d e\r\n",
    "pub_bad_size": b"CONNECT {}\r\nPUB a xx\r\n",
    "sub_bad_args": b"CONNECT {}\r\nSUB\r\n",
    "payload_without_crlf": b"CONNECT {}\r\nPUB a 3\r\nabcdef\r\n",
    "hpub_header_bigger_than_total": b'CONNECT {"headers":true}\r\nHPUB a 10 5\r\n12345\r\n',
    "no_responders_without_headers": b'CONNECT {"no_responders":true}\r\nPING\r\n',
    "ping_before_connect": b"PING\r\n",
    "pong_is_silent": b"CONNECT {}\r\nPONG\r\nPING\r\n",
    "tabs_as_separators": b"CONNECT {}\r\nSUB\tfoo\t 7\r\nPING\r\n",
    "invalid_connect_json": b"CONNECT {nope\r\nPING\r\n",
    # Go's encoding/json matches keys case-insensitively: verbose on, headers negotiated.
    "connect_keys_any_case": (
        b'CONNECT {"VERBOSE":true,"HEADERS":true}\r\nSUB h 1\r\n'
        b"HPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n"
    ),
    # A second CONNECT without `verbose` keeps the value of the first.
    "second_connect_keeps_verbose": (
        b'CONNECT {"verbose":false}\r\nCONNECT {"name":"x"}\r\nSUB s 1\r\nPING\r\n'
    ),
    "second_connect_turns_verbose_on": b'CONNECT {"verbose":false}\r\nCONNECT {"verbose":true}\r\nPING\r\n',
    "no_echo_queue_subscription": (
        b'CONNECT {"verbose":false,"echo":false}\r\nSUB e q 1\r\nPUB e 1\r\na\r\nPUB e 1\r\nb\r\nPING\r\n'
    ),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.conftest import NatsServer

    workdir = tmp_path_factory.mktemp("conformance")
    upstream = NatsServer(workdir)
    proc = SidecarProcess(workdir, {**sidecar_config(upstream.url), "spool": {"path": str(workdir / "sp")}})
    yield upstream, proc
    proc.kill()
    upstream.stop()


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_bytes_as_nats_server(servers: tuple, name: str) -> None:
    upstream, proc = servers
    want = exchange(upstream.port, CASES[name])
    got = exchange(proc.ports["nats"], CASES[name])
    assert got == want


def test_garbage_does_not_stop_the_sidecar(servers: tuple) -> None:
    _upstream, proc = servers
    rng = __import__("random").Random(7)
    for _ in range(20):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        exchange(proc.ports["nats"], junk, settle=0.05)
    exchange(proc.ports["nats"], os.urandom(200_000), settle=0.05)
    out, closed = exchange(proc.ports["nats"], b'CONNECT {"verbose":false}\r\nPING\r\n')
    assert (out, closed) == (b"PONG\r\n", False)


def test_a_sub_past_the_limit_gets_the_same_error_as_from_nats_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # nats-server's max_subscriptions against clients.maxSubscriptions: the SUB past it is refused with
    # -ERR 'maximum subscriptions exceeded' and ignored, the connection stays; after an UNSUB one fits.
    from tests.conftest import NatsServer

    workdir = tmp_path_factory.mktemp("max-subs")
    limited = NatsServer(workdir, extra_conf="max_subscriptions: 2")
    upstream = NatsServer(workdir)
    proc = SidecarProcess(workdir, sidecar_config(upstream.url, clients={"maxSubscriptions": 2}))
    # (One PING: the sidecar answers a PING once the upstream has answered its own, so MSGs may come
    # ahead of an earlier PONG than with nats-server.)
    data = (
        b'CONNECT {"verbose":false}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPUB c 1\r\nx\r\nPUB a 1\r\ny\r\n'
        b"UNSUB 1\r\nSUB d 4\r\nPUB d 1\r\nz\r\nPING\r\n"
    )
    try:
        want = exchange(limited.port, data)
        assert b"-ERR 'maximum subscriptions exceeded'\r\n" in want[0] and b"MSG d 4 1" in want[0]
        assert exchange(proc.ports["nats"], data) == want
        with urllib.request.urlopen(proc.admin_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "\nkpi_sidecar_subscriptions_refused_total 1.0" in text
    finally:
        proc.kill()
        upstream.stop()
        limited.stop()


def test_the_total_subscription_limit_counts_every_application(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.conftest import NatsServer

    workdir = tmp_path_factory.mktemp("max-total-subs")
    upstream = NatsServer(workdir)
    proc = SidecarProcess(workdir, sidecar_config(upstream.url, clients={"maxTotalSubscriptions": 3}))
    try:
        first = socket.create_connection(("127.0.0.1", proc.ports["nats"]), timeout=3)
        first.recv(65536)
        first.sendall(b'CONNECT {"verbose":false}\r\nSUB a 1\r\nSUB b 2\r\nPING\r\n')
        assert first.recv(65536) == b"PONG\r\n"
        data = b'CONNECT {"verbose":false}\r\nSUB c 1\r\nSUB d 2\r\nPUB c 1\r\nx\r\nPUB d 1\r\ny\r\nPING\r\n'
        out, closed = exchange(proc.ports["nats"], data)
        assert (out, closed) == (
            b"-ERR 'maximum subscriptions exceeded'\r\nMSG c 1 1\r\nx\r\nPONG\r\n",
            False,
        )
        first.close()
        time.sleep(0.3)  # its subscriptions go with it: room again
        out, _ = exchange(proc.ports["nats"], data)
        assert out == b"MSG c 1 1\r\nx\r\nMSG d 2 1\r\ny\r\nPONG\r\n"
    finally:
        proc.kill()
        upstream.stop()
