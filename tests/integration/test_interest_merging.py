"""Merged interest (#14 item 4): identical non-queue subscriptions of many application connections share one
upstream subscription, and each application subscription still gets what nats-server would give it: every
message once, with its own sid, in order; its own max count; no echo for an echo=false client; in-flight
messages after its UNSUB or drain; the -ERR of a refused SUB; one SUB per subject after a reconnect. At
level none and under a flood that holds the level at high or critical (deliveries are never shed). Real
nats-server processes, unmodified nats-py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from proxy.nats import protocol as nats_protocol
from tests.conftest import NatsServer, SidecarProcess, eventually, settle, sidecar_config
from tests.flood import flood_at

pytestmark = pytest.mark.slow

LEVELS = [None, "high", "critical"]


def upstream_subs(hub: NatsServer, prefix: str) -> list[str]:
    """The subjects the sidecar's upstream connection subscribes under `prefix`, as the hub sees them."""
    return sorted(s for s in hub.subscriptions_of("kpi-sidecar") if s.startswith(prefix))


def collector(into: list[bytes]) -> Callable[[Any], Any]:
    async def cb(msg: Any) -> None:
        into.append(msg.data)

    return cb


async def publish(nc: nats.NATS, subject: str, bodies: list[bytes]) -> None:
    for i, body in enumerate(bodies):
        await nc.publish(subject, body)
        if i % 200 == 199:
            await nc.flush()
    await nc.flush()


# ------------------------------------------------------------------------------------- fan-out, counts


@pytest.mark.parametrize("level", LEVELS)
async def test_identical_subscriptions_share_one_upstream_subscription(
    seed_sidecar: SidecarProcess, level: str | None
) -> None:
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    subjects = ["mg.a", "mg.b", "mg.c"]
    conns, count = 12, 300
    with flood_at(seed_sidecar, level):
        apps = [await nats.connect(seed_sidecar.nats_url) for _ in range(conns)]
        got: dict[tuple[int, str, int], list[bytes]] = {}
        for i, nc in enumerate(apps):
            for subject in subjects:
                for k in range(2 if i == 0 else 1):  # the first connection twice on each (two sids)
                    got[(i, subject, k)] = []
                    await nc.subscribe(subject, cb=collector(got[(i, subject, k)]))
            await settle(nc)
        # An overlapping wildcard is its own subscription: each message once per subscription.
        wildcard: list[bytes] = []
        await apps[1].subscribe("mg.*", cb=collector(wildcard))
        await settle(apps[1])
        # 12 x 3 + 3 + 1 application subscriptions, 4 upstream (before merging: 40).
        assert upstream_subs(hub, "mg.") == ["mg.*", "mg.a", "mg.b", "mg.c"]
        assert seed_sidecar.metric("kpi_sidecar_upstream_subscriptions") == 4
        assert seed_sidecar.metric("kpi_sidecar_subscriptions") == conns * 3 + 3 + 1
        direct = await nats.connect(hub.url)
        for subject in subjects:
            await publish(direct, subject, [f"{subject}:{n}".encode() for n in range(count)])
        total = len(got) * count + len(subjects) * count
        await eventually(lambda: sum(map(len, got.values())) + len(wildcard) >= total, timeout=20)
        await asyncio.sleep(0.2)
        for (_, subject, _), bodies in got.items():
            assert bodies == [f"{subject}:{n}".encode() for n in range(count)]
        assert wildcard == [f"{s}:{n}".encode() for s in subjects for n in range(count)]
        for nc in apps:
            await nc.close()
        await eventually(lambda: upstream_subs(hub, "mg.") == [])
        assert seed_sidecar.metric("kpi_sidecar_upstream_subscriptions") == 0
        await direct.close()


@pytest.mark.parametrize("level", LEVELS)
async def test_max_counts_and_unsubscribe_are_per_member(
    seed_sidecar: SidecarProcess, level: str | None
) -> None:
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    with flood_at(seed_sidecar, level):
        apps = [await nats.connect(seed_sidecar.nats_url) for _ in range(4)]
        got: list[list[bytes]] = [[] for _ in apps]
        subs = [await nc.subscribe("mx.x", cb=collector(got[i])) for i, nc in enumerate(apps)]
        await subs[0].unsubscribe(limit=3)
        await subs[1].unsubscribe(limit=7)
        for nc in apps:
            await settle(nc)
        assert upstream_subs(hub, "mx.") == ["mx.x"]  # before merging: one per application
        await subs[3].unsubscribe()  # one member leaves: the others keep the upstream subscription
        await settle(apps[3])
        assert upstream_subs(hub, "mx.") == ["mx.x"]
        direct = await nats.connect(hub.url)
        await publish(direct, "mx.x", [b"%d" % i for i in range(10)])
        await eventually(lambda: len(got[2]) >= 10)
        await asyncio.sleep(0.2)
        assert got[0] == [b"0", b"1", b"2"]
        assert got[1] == [b"%d" % i for i in range(7)]
        assert got[2] == [b"%d" % i for i in range(10)]
        assert got[3] == []
        # The members that reached their max are gone; the upstream subscription stays for the last one.
        assert upstream_subs(hub, "mx.") == ["mx.x"]
        assert seed_sidecar.metric("kpi_sidecar_subscriptions") == 1
        await subs[2].unsubscribe()
        await settle(apps[2])
        await eventually(lambda: upstream_subs(hub, "mx.") == [])
        for nc in [*apps, direct]:
            await nc.close()


@pytest.mark.parametrize("level", LEVELS)
async def test_an_echo_false_member_does_not_get_its_own_messages(
    seed_sidecar: SidecarProcess, level: str | None
) -> None:
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    with flood_at(seed_sidecar, level):
        quiet = await nats.connect(seed_sidecar.nats_url, no_echo=True)
        other = await nats.connect(seed_sidecar.nats_url)
        mine: list[list[bytes]] = [[], []]
        theirs: list[bytes] = []
        for into in mine:  # two sids of the echo=false client on the merged subject
            await quiet.subscribe("ec.x", cb=collector(into))
        await other.subscribe("ec.x", cb=collector(theirs))
        await settle(quiet)
        await settle(other)
        assert upstream_subs(hub, "ec.") == ["ec.x"]
        # Critical: the flood's level must not shed the echo=false client's own publishes here.
        for i in range(20):
            await quiet.publish("ec.x", b"q%d" % i, headers={"KPI-Priority": "critical"})
        await settle(quiet)
        direct = await nats.connect(hub.url)
        await publish(direct, "ec.x", [b"d%d" % i for i in range(20)])
        await eventually(lambda: len(theirs) >= 40 and all(len(m) >= 20 for m in mine))
        await asyncio.sleep(0.2)
        # In order from each publisher (at high, the critical ones may come after the direct ones).
        assert [b for b in theirs if b[:1] == b"q"] == [b"q%d" % i for i in range(20)]
        assert [b for b in theirs if b[:1] == b"d"] == [b"d%d" % i for i in range(20)]
        assert len(theirs) == 40
        assert mine == [[b"d%d" % i for i in range(20)]] * 2
        for nc in (quiet, other, direct):
            await nc.close()


@pytest.mark.parametrize("level", LEVELS)
async def test_a_member_draining_mid_flow_loses_nothing_and_costs_the_others_nothing(
    seed_sidecar: SidecarProcess, level: str | None
) -> None:
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    count = 3000
    with flood_at(seed_sidecar, level):
        drainer = await nats.connect(seed_sidecar.nats_url)
        others = [await nats.connect(seed_sidecar.nats_url) for _ in range(2)]
        drained: list[bytes] = []
        got: list[list[bytes]] = [[], []]
        sub = await drainer.subscribe("dr.x", cb=collector(drained))
        for nc, into in zip(others, got, strict=True):
            await nc.subscribe("dr.x", cb=collector(into))
            await settle(nc)
        await settle(drainer)
        assert upstream_subs(hub, "dr.") == ["dr.x"]
        direct = await nats.connect(hub.url)
        sender = asyncio.create_task(publish(direct, "dr.x", [b"%d" % i for i in range(count)]))
        await eventually(lambda: len(drained) >= count // 3, timeout=10)
        await sub.drain()  # UNSUB, then every message already on its way is still handled
        at_drain = len(drained)
        await sender
        await eventually(lambda: all(len(g) >= count for g in got), timeout=20)
        await asyncio.sleep(0.2)
        assert got == [[b"%d" % i for i in range(count)]] * 2
        # What the draining member got is a gapless prefix, and nothing came after its drain ended.
        assert drained == [b"%d" % i for i in range(len(drained))]
        assert len(drained) == at_drain
        assert upstream_subs(hub, "dr.") == ["dr.x"]
        for nc in [drainer, *others, direct]:
            await nc.close()


# ------------------------------------------------------------------------------ reconnect, permissions


@pytest.mark.parametrize("level", [None, "high"])
async def test_one_sub_per_merged_subject_is_replayed_after_the_hub_restarts(
    seed_sidecar: SidecarProcess, level: str | None
) -> None:
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    # Under the flood the restart queues what it sends, so the level may move on: not checked at the end.
    with flood_at(seed_sidecar, level, held=False):
        await _replayed_after_restart(seed_sidecar, hub)


async def _replayed_after_restart(seed_sidecar: SidecarProcess, hub: NatsServer) -> None:
    apps = [await nats.connect(seed_sidecar.nats_url, max_reconnect_attempts=-1) for _ in range(3)]
    got: dict[tuple[int, str, int], list[bytes]] = {}
    for i, nc in enumerate(apps):
        for k in range(2 if i == 0 else 1):
            got[(i, "rc.x", k)] = []
            await nc.subscribe("rc.x", cb=collector(got[(i, "rc.x", k)]))
        if i:  # queue subscriptions are not merged: one upstream SUB each
            got[(i, "rc.q", 0)] = []
            await nc.subscribe("rc.q", queue="g", cb=collector(got[(i, "rc.q", 0)]))
        await settle(nc)
    assert upstream_subs(hub, "rc.") == ["rc.q", "rc.q", "rc.x"]
    hub.stop()
    await eventually(lambda: not seed_sidecar.status()["upstreamConnected"], timeout=10)
    hub.start()
    await eventually(lambda: seed_sidecar.status()["upstreamConnected"], timeout=10)
    await eventually(lambda: upstream_subs(hub, "rc.") == ["rc.q", "rc.q", "rc.x"])
    direct = await nats.connect(hub.url)
    await publish(direct, "rc.x", [b"%d" % i for i in range(50)])
    await publish(direct, "rc.q", [b"%d" % i for i in range(50)])
    await eventually(lambda: all(len(v) >= 50 for k, v in got.items() if k[1] == "rc.x"))
    await eventually(lambda: sum(len(v) for k, v in got.items() if k[1] == "rc.q") >= 50)
    await asyncio.sleep(0.2)
    for key, bodies in got.items():
        if key[1] == "rc.x":
            assert bodies == [b"%d" % i for i in range(50)]
    queued = [b for k, v in got.items() if k[1] == "rc.q" for b in v]
    assert sorted(queued) == sorted(b"%d" % i for i in range(50))  # each once, to one member of the group
    for nc in [*apps, direct]:
        await nc.close()


async def test_members_that_join_while_the_hub_is_down_get_every_message_after_it_is_back(
    seed_sidecar: SidecarProcess,
) -> None:
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    hub.stop()
    await eventually(lambda: not seed_sidecar.status()["upstreamConnected"], timeout=10)
    conns = [Raw(seed_sidecar.ports["nats"]) for _ in range(3)]
    for i, conn in enumerate(conns):  # the first creates the subscription, the others join it
        conn.send(b'CONNECT {"verbose":false}\r\nSUB dj.x %d\r\nPING\r\n' % (i + 1))
        conn.until_pongs(1)
    hub.start()
    await eventually(lambda: seed_sidecar.status()["upstreamConnected"], timeout=10)
    await eventually(lambda: upstream_subs(hub, "dj.") == ["dj.x"])
    publisher = Raw(hub.port)
    frames = b"".join(b"PUB dj.x 3\r\nm%02d\r\n" % i for i in range(50))
    publisher.send(b'CONNECT {"verbose":false}\r\n' + frames + b"PING\r\n")
    publisher.until_pongs(1)
    for i, conn in enumerate(conns):
        conn.send(b"PING\r\n")
        got = by_sid(conn.until_pongs(1))
        assert got[b"%d" % (i + 1)] == [b"dj.x m%02d" % n for n in range(50)]
    for conn in [*conns, publisher]:
        conn.close()


PERMISSIONS = """
authorization {
  users = [
    {user: sidecar, password: s3cret, permissions: {subscribe: {deny: ["secret.>"]}}},
    {user: admin, password: adm1n}
  ]
}
"""


@pytest.mark.parametrize("level", [None, "high"])
async def test_every_member_of_a_refused_subscription_gets_the_error(
    nats_factory: Any, sidecar_factory: Any, workdir: Path, level: str | None
) -> None:
    hub: NatsServer = nats_factory(extra_conf=PERMISSIONS)
    config = sidecar_config(hub.url, upstream={"servers": [hub.url], "user": "sidecar", "password": "s3cret"})
    config["backpressure"] = {}
    proc: SidecarProcess = sidecar_factory(config)
    errors: list[list[str]] = [[], [], []]

    def on_error(into: list[str]) -> Callable[[Exception], Any]:
        async def cb(err: Exception) -> None:
            into.append(str(err))

        return cb

    denied = 'nats: permissions violation for subscription to "secret.x"'
    with flood_at(proc, level):
        apps = [
            await nats.connect(proc.nats_url, allow_reconnect=False, error_cb=on_error(errors[i]))
            for i in range(3)
        ]
        open_got: list[bytes] = []
        await apps[2].subscribe("open.x", cb=collector(open_got))
        for i, nc in enumerate(apps):
            for _ in range(2 if i == 0 else 1):  # the first connection twice: an -ERR for each SUB
                await nc.subscribe("secret.x")
        for nc in apps:
            await settle(nc)
        await eventually(lambda: len(errors[0]) >= 2 and len(errors[1]) >= 1 and len(errors[2]) >= 1)
        await asyncio.sleep(0.2)
        assert errors == [[denied, denied], [denied], [denied]]
        assert all(nc.is_connected for nc in apps)  # as nats-server: the connection stays
        assert upstream_subs(hub, "secret.") == []
        assert proc.metric("kpi_sidecar_upstream_subscriptions") == 1  # open.x
        # Forgotten: a new SUB is a new upstream SUB, refused again.
        await apps[1].subscribe("secret.x")
        await settle(apps[1])
        await eventually(lambda: len(errors[1]) >= 2)
        assert errors[1] == [denied, denied]
        admin = await nats.connect(hub.url, user="admin", password="adm1n")
        await publish(admin, "open.x", [b"1", b"2"])
        await eventually(lambda: len(open_got) >= 2)
        assert open_got == [b"1", b"2"]
        for nc in [*apps, admin]:
            await nc.close()


# ------------------------------------------------------------------------------------ wire, both paths


class Raw:
    """A raw NATS connection: bytes in, everything received until the n-th PONG out."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf.partition(b"\r\n")[2]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until_pongs(self, n: int) -> bytes:
        while self.buf.count(b"PONG\r\n") < n:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "closed"
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        self.sock.close()


def by_sid(data: bytes) -> dict[bytes, list[bytes]]:
    """The MSG payloads received per sid (nats-server's order among the sids of one message is its own),
    and the other lines under b""."""
    out: dict[bytes, list[bytes]] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        line = data[pos:end]
        if line.startswith(b"MSG "):
            parts = line.split(b" ")
            size = int(parts[-1])
            body = data[end + 2 : end + 2 + size]
            out.setdefault(parts[2], []).append(b" ".join([parts[1], *parts[3:-1], body]))
            pos = end + 2 + size + 2
        else:
            out.setdefault(b"", []).append(line)
            pos = end + 2
    return out


# One connection, several sids on one subject: a max count on one, an UNSUB of another between two of the
# client's own publishes, a SUB that joins the merged subscription right after another publish, and an
# overlapping wildcard. nats-server gives sid 1 a1-a3, sid 2 a1-a2, sid 3 everything, sid 4 only a5.
CUTS = (
    b'CONNECT {"verbose":false}\r\nSUB cf.x 1\r\nSUB cf.x 2\r\nSUB cf.* 3\r\nUNSUB 2 2\r\nPING\r\n'
    b"PUB cf.x 2\r\na1\r\nPUB cf.x 2\r\na2\r\nPUB cf.x 2\r\na3\r\nUNSUB 1\r\nPUB cf.x 2\r\na4\r\n"
    b"SUB cf.x 4\r\nPUB cf.x 2\r\na5\r\nPING\r\n"
)
NO_ECHO = (
    b'CONNECT {"verbose":false,"echo":false}\r\nSUB cf.e 1\r\nSUB cf.e 2\r\nSUB cf.* 3\r\nPING\r\n'
    b"PUB cf.e 1\r\na\r\nPING\r\n"
)


@pytest.mark.parametrize("case", [CUTS, NO_ECHO], ids=["cuts", "no_echo"])
def test_each_sid_gets_what_nats_server_gives_it(seed_sidecar: SidecarProcess, case: bytes) -> None:
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    results = []
    for port in (hub.port, seed_sidecar.ports["nats"]):
        conn = Raw(port)
        conn.send(case)
        results.append(by_sid(conn.until_pongs(2)))
        conn.close()
    direct, sidecar = results
    assert sidecar == direct
    if case is CUTS:
        assert direct[b"4"] == [b"cf.x a5"] and len(direct[b"3"]) == 5


@pytest.mark.skipif(nats_protocol.route_msgs is None, reason="no C router to compare with")
def test_the_c_router_and_the_python_path_write_the_same_bytes(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    # Fan-out in C (route_msgs with several members) against the pure-Python path, frame for frame on
    # every connection; custom-prefix replies leave the C router for the Python path in the middle of runs.
    procs = [
        sidecar_factory(sidecar_config(nats_server.url), env=env)
        for env in ({}, {"KPI_SIDECAR_NO_EXTENSIONS": "1"})
    ]
    setups = [
        b"SUB fo.x 1\r\nSUB fo.x 2\r\nPING\r\n",
        b"SUB fo.x 7\r\nSUB fo.* 8\r\nPING\r\n",
        b"SUB fo.x 1\r\nPING\r\n",
    ]
    conns = [[Raw(proc.ports["nats"]) for _ in setups] for proc in procs]
    for row in conns:
        for conn, setup in zip(row, setups, strict=True):
            conn.send(b'CONNECT {"verbose":false}\r\n' + setup)
            conn.until_pongs(1)
    publisher = Raw(nats_server.port)
    frames = bytearray(b'CONNECT {"verbose":false}\r\n')
    for i in range(600):
        reply = (b"", b" _INBOX.r%d" % i, b" my.reply.%d" % i)[i % 7 % 3]
        body = b"m%d-" % i + b"x" * (i % 50)
        frames += b"PUB fo.x%s %d\r\n%s\r\n" % (reply, len(body), body)
    publisher.send(bytes(frames) + b"PING\r\n")
    publisher.until_pongs(1)
    received = []
    for row in conns:
        for conn in row:
            conn.send(b"PING\r\n")
        received.append([conn.until_pongs(1) for conn in row])
    c_path, py_path = received
    assert c_path == py_path
    assert by_sid(c_path[0])[b"1"][-1].endswith(b"m599-" + b"x" * (599 % 50))
    assert len(by_sid(c_path[1])[b"8"]) == 600
    for conn in [publisher, *conns[0], *conns[1]]:
        conn.close()


def test_many_connections_with_the_same_subscriptions_are_one_upstream_subscription_each(
    seed_sidecar: SidecarProcess,
) -> None:
    # The measure at a smaller scale: N connections x M identical subscriptions are M upstream
    # subscriptions (a leaf node's count), and every application subscription gets every message.
    hub: NatsServer = seed_sidecar.upstream  # type: ignore[attr-defined]
    conns, subjects = 200, [f"sc.{i}" for i in range(10)]
    setup = b"".join(b"SUB %s %d\r\n" % (s.encode(), i + 1) for i, s in enumerate(subjects))
    apps = [Raw(seed_sidecar.ports["nats"]) for _ in range(conns)]
    for conn in apps:
        conn.send(b'CONNECT {"verbose":false}\r\n' + setup + b"PING\r\n")
    for conn in apps:
        conn.until_pongs(1)
    assert upstream_subs(hub, "sc.") == sorted(subjects)  # before merging: 2,000
    assert seed_sidecar.metric("kpi_sidecar_subscriptions") == conns * len(subjects)
    publisher = Raw(hub.port)
    publisher.send(
        b'CONNECT {"verbose":false}\r\n'
        + b"".join(b"PUB %s 2\r\nhi\r\n" % s.encode() for s in subjects)
        + b"PING\r\n"
    )
    publisher.until_pongs(1)
    want = {b"%d" % (i + 1): [s.encode() + b" hi"] for i, s in enumerate(subjects)}
    for conn in apps:
        conn.send(b"PING\r\n")
        got = by_sid(conn.until_pongs(1))
        assert got.pop(b"") == [b"PONG"]
        assert got == want
    for conn in [*apps, publisher]:
        conn.close()


# ------------------------------------------------------------------------------------ a stuck member


@pytest.mark.parametrize("headers", [None, {"h": "1"}], ids=["msg_c_router", "hmsg_python_path"])
async def test_a_member_that_stops_reading_is_cut_and_the_others_get_everything(
    nats_server: NatsServer, sidecar_factory: Any, headers: dict[str, str] | None
) -> None:
    # The upstream is read no faster than the applications read (merged interest fans one upstream
    # message out to all of them); a member that reads nothing holds it for one hold at most, is cut at its
    # own bound, and the others get every message.
    config = sidecar_config(nats_server.url, clients={"maxPendingBytes": 4 * 1024 * 1024})
    proc: SidecarProcess = sidecar_factory(config)
    stuck = Raw(proc.ports["nats"])
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    stuck.send(b'CONNECT {"verbose":false}\r\nSUB sl.x 1\r\nPING\r\n')
    stuck.until_pongs(1)
    apps = [await nats.connect(proc.nats_url) for _ in range(2)]
    got: list[list[bytes]] = [[], []]
    for nc, into in zip(apps, got, strict=True):
        await nc.subscribe("sl.x", cb=collector(into), pending_bytes_limit=256 * 1024 * 1024)
        await settle(nc)
    assert upstream_subs(nats_server, "sl.") == ["sl.x"]
    direct = await nats.connect(nats_server.url)
    count, body = 20_000, b"x" * 1000
    for i in range(count):
        await direct.publish("sl.x", b"%d:" % i + body, headers=headers)
        if i % 200 == 199:
            await direct.flush()
    await direct.flush()
    await eventually(lambda: all(len(g) >= count for g in got), timeout=30)
    assert got == [[b"%d:" % i + body for i in range(count)]] * 2
    await eventually(lambda: proc.metric("kpi_sidecar_slow_consumers_total") >= 1, timeout=10)
    assert proc.metric("kpi_sidecar_upstream_read_holds_total") >= 1
    assert proc.metric("kpi_sidecar_upstream_read_held") == 0
    # The PONGs that waited in the unread socket were no upstream latency samples: the level stayed.
    assert proc.status()["degradationLevel"] == "none"
    stuck.close()
    for nc in [*apps, direct]:
        await nc.close()
