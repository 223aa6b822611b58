"""Fleet coordination over JetStream KV with real processes: three sidecars in front of one nats-server share
`fleet.maxPublishRate`, follow a member killed with SIGKILL, and fall back as documented when the KV is
unavailable (JetStream off, the upstream down). Counted at a subscriber on the hub."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ROOT, NatsServer, SidecarProcess, sidecar_config
from tests.flood import Flood

pytestmark = pytest.mark.slow

BUDGET = 600.0
LOCAL_RATE = 5000.0  # backpressure.maxPublishRate: the fallback, never unlimited
FLEET = {
    "name": "svc",
    "bucket": "fleet_test",
    "maxPublishRate": BUDGET,
    "intervalS": 0.5,
    "ttlS": 2,
    "holdS": 3,
}
# Per sidecar, as a multiple of its share (200 msg/s): 1.75x holds the level at high; 5x at critical, where
# the heavy-hitter breakers would shed the one flooded subject (their job, not the ceiling's): off there.
FLOODS = {"high": (350, {}), "critical": (1000, {"enableCircuitBreaker": False})}


class HubCounter:
    """A raw subscriber on the hub counting the messages of `subject` (wildcards allowed), in a thread."""

    def __init__(self, port: int, subject: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f'CONNECT {{"verbose":false}}\r\nSUB {subject} 1\r\nPING\r\n'.encode())
        self.count = 0
        self._buf = b""
        self._pong = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._pong.wait(5), "the hub did not answer"

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            buf = self._buf + data
            # Payloads are x's (tests/flood.py): a frame starts at each "MSG " after a line end.
            self.count += buf.count(b"\r\nMSG ") + (1 if buf.startswith(b"MSG ") and not self._buf else 0)
            if b"PONG" in buf:
                self._pong.set()
                buf = buf.replace(b"PONG\r\n", b"")
            if b"PING\r\n" in buf:
                self.sock.sendall(b"PONG\r\n")
                buf = buf.replace(b"PING\r\n", b"")
            self._buf = buf[-8:]  # enough to see a "\r\nMSG " cut by the read

    def close(self) -> None:
        self.sock.close()


def fleet_of(proc: SidecarProcess) -> dict[str, Any]:
    return proc.get("/api/backpressure/fleet")["data"]


def fleet_health(proc: SidecarProcess) -> dict[str, Any]:
    return proc.get("/api/backpressure/health/detailed")["data"]["components"]["fleet"]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `predicate()`; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def member_config(
    url: str, member: str, backpressure: dict[str, Any] | None = None, **fleet: Any
) -> dict[str, Any]:
    return sidecar_config(
        url,
        fleet={**FLEET, "memberId": member, **fleet},
        policies=[{"subject": "flood.>", "priority": "high"}],  # not sampled: the ceiling alone limits it
        backpressure={"maxPublishRate": LOCAL_RATE, "maxQueueSize": 2000, **(backpressure or {})},
    )


def ceilings(procs: list[SidecarProcess]) -> list[float]:
    return [fleet_of(p)["rateCeiling"] for p in procs]


@pytest.mark.parametrize("level", list(FLOODS))
def test_three_sidecars_share_the_budget_and_follow_a_sigkill(
    nats_server: NatsServer, sidecar_factory: Any, level: str
) -> None:
    flood_rate, backpressure = FLOODS[level]
    fleet3 = [sidecar_factory(member_config(nats_server.url, f"m{i}", backpressure)) for i in range(3)]
    took = wait_for(
        lambda: ceilings(fleet3) == pytest.approx([BUDGET / 3] * 3), 10, "a third of the budget each"
    )
    print(f"shares converged to a third each {took:.1f}s after the third sidecar was ready")
    view = fleet_of(fleet3[0])
    assert view["mode"] == "shared" and view["kvAvailable"] and view["budget"] == BUDGET
    assert [m["id"] for m in view["members"]] == ["m0", "m1", "m2"]
    assert [m["own"] for m in view["members"]] == [True, False, False]
    assert all(m["share"] == pytest.approx(200.0) for m in view["members"])
    # Fleet traffic is control traffic: not one application message counted.
    status = fleet3[0].status()
    assert (status["receivedMessages"], status["forwardedMessages"], status["droppedMessages"]) == (0, 0, 0)
    assert fleet3[0].metric("kpi_fleet_members") == 3
    assert fleet3[0].metric("kpi_fleet_share_rate") == pytest.approx(200.0)

    table = subprocess.run(
        [sys.executable, "-m", "proxy", "fleet", "--admin", fleet3[1].admin_url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=20,
        check=True,
    ).stdout
    assert "3 live members, mode shared" in table
    assert re.search(r"^\s+m1 \*\s", table, re.MULTILINE), table
    assert len(re.findall(r"^\s+m[012]\b.*\b200\.0\b", table, re.MULTILINE)) == 3, table

    hub = HubCounter(nats_server.port, "flood.>")
    floods = [Flood(p.ports["nats"], f"flood.{i}", flood_rate) for i, p in enumerate(fleet3)]
    try:
        for flood in floods:
            flood.__enter__()
        time.sleep(3)  # the level settles, the initial bursts of the token buckets are spent
        assert {fleet_of(p)["mode"] for p in fleet3} == {"shared"}
        assert {p.status()["degradationLevel"] for p in fleet3} == {level}
        before, t0 = hub.count, time.monotonic()
        time.sleep(6)
        rate = (hub.count - before) / (time.monotonic() - t0)
        print(
            f"fleet forwarded rate, 3 x {flood_rate} msg/s offered ({level}): {rate:.0f} msg/s "
            f"(budget {BUDGET:g})"
        )
        assert BUDGET * 0.9 <= rate <= BUDGET * 1.1
        # The fleet's own traffic went through the flood untouched: every put acknowledged, still shared.
        views = [fleet_of(p) for p in fleet3]
        assert [v["counters"]["putsFailed"] for v in views] == [0, 0, 0]
        assert {v["mode"] for v in views} == {"shared"}

        # SIGKILL one: it stops reporting, the others' shares grow to half each within the TTL.
        floods[2].stop()  # its publisher goes with it (else a broken pipe in the test's output)
        fleet3[2].kill()
        took = wait_for(
            lambda: ceilings(fleet3[:2]) == pytest.approx([BUDGET / 2] * 2), 8, "half the budget each"
        )
        print(f"after SIGKILL of m2 the others' shares grew to half each in {took:.1f}s")
        assert [m["id"] for m in fleet_of(fleet3[0])["members"]] == ["m0", "m1"]
        time.sleep(1)
        before, t0 = hub.count, time.monotonic()
        time.sleep(5)
        rate = (hub.count - before) / (time.monotonic() - t0)
        print(f"two members left, fleet forwarded rate: {rate:.0f} msg/s (budget {BUDGET:g})")
        assert BUDGET * 0.9 <= rate <= BUDGET * 1.1
    finally:
        for flood in floods:
            flood.stop()
        hub.close()


def restart(server: NatsServer, *, jetstream: bool) -> None:
    """Stop the hub and start it again on the same port, with or without JetStream."""
    server.stop()
    lines = [line for line in server.conf.read_text().splitlines() if not line.startswith("jetstream")]
    if jetstream:
        lines.append(f'jetstream {{ store_dir: "{server.workdir / f"js-{server.port}"}" }}')
    server.conf.write_text("\n".join(lines) + "\n")
    server.start()


def test_kv_unavailable_holds_the_last_share_then_falls_back_to_the_local_rate(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    procs = [sidecar_factory(member_config(nats_server.url, f"m{i}")) for i in range(2)]
    wait_for(lambda: ceilings(procs) == pytest.approx([BUDGET / 2] * 2), 10, "half the budget each")
    assert fleet_health(procs[0])["status"] == "ok"

    # JetStream off: puts and bucket lookups go unanswered; the last share is kept for holdS ...
    restart(nats_server, jetstream=False)
    wait_for(lambda: fleet_health(procs[0])["mode"] == "hold", 5, "hold the last share")
    health = fleet_health(procs[0])
    assert health["fallback"] and health["status"] == "warning" and not health["kvAvailable"]
    assert health["rateCeiling"] == pytest.approx(BUDGET / 2)
    assert health["kvError"]
    # ... then the local maxPublishRate, never unlimited.
    wait_for(lambda: fleet_health(procs[0])["mode"] == "local", 6, "fall back to the local rate")
    assert fleet_health(procs[0])["rateCeiling"] == LOCAL_RATE
    assert procs[0].metric("kpi_fleet_share_rate") == LOCAL_RATE
    assert procs[0].metric("kpi_fleet_kv_available") == 0

    # JetStream back: the bucket is created again and the shares come back.
    restart(nats_server, jetstream=True)
    wait_for(lambda: ceilings(procs) == pytest.approx([BUDGET / 2] * 2), 10, "shares again")

    # The upstream down altogether: the same hold, then the local rate.
    nats_server.kill()
    wait_for(lambda: fleet_health(procs[1])["mode"] == "hold", 5, "hold with the upstream down")
    assert fleet_health(procs[1])["rateCeiling"] == pytest.approx(BUDGET / 2)
    assert "upstream" in fleet_health(procs[1])["kvError"]
    wait_for(lambda: fleet_health(procs[1])["mode"] == "local", 6, "local rate with the upstream down")
    assert fleet_health(procs[1])["rateCeiling"] == LOCAL_RATE
    assert "KV unavailable" in procs[1].log() and "longer than holdS" in procs[1].log()


def test_without_jetstream_from_the_start_the_local_rate_applies(
    nats_factory: Any, sidecar_factory: Any
) -> None:
    hub = nats_factory(jetstream=False)
    proc = sidecar_factory(member_config(hub.url, "solo"))
    wait_for(lambda: bool(fleet_health(proc)["kvError"]), 5, "the KV error reported")
    health = fleet_health(proc)
    assert health["mode"] == "joining" and health["status"] == "warning"
    assert "JetStream is not enabled" in health["kvError"]
    assert health["rateCeiling"] == LOCAL_RATE
    view = fleet_of(proc)
    assert [m["id"] for m in view["members"]] == ["solo"]


def test_a_sidecar_stopping_gracefully_leaves_at_once(nats_server: NatsServer, sidecar_factory: Any) -> None:
    # A long TTL: only the deleted key can make the member leave within the wait.
    procs = [sidecar_factory(member_config(nats_server.url, f"m{i}", ttlS=60)) for i in range(2)]
    wait_for(lambda: ceilings(procs) == pytest.approx([BUDGET / 2] * 2), 10, "half the budget each")
    assert procs[1].terminate() == 0
    wait_for(lambda: ceilings(procs[:1]) == pytest.approx([BUDGET]), 3, "the whole budget")
    assert "member m1 left" in procs[0].log()


def test_fleet_budget_reloads_without_a_restart(nats_server: NatsServer, sidecar_factory: Any) -> None:
    import yaml

    proc = sidecar_factory(member_config(nats_server.url, "solo"))
    wait_for(lambda: fleet_of(proc)["rateCeiling"] == pytest.approx(BUDGET), 10, "the whole budget")
    config = yaml.safe_load(proc.config_path.read_text())
    config["fleet"]["maxPublishRate"] = 900
    proc.config_path.write_text(yaml.safe_dump(config))
    wait_for(lambda: fleet_of(proc)["rateCeiling"] == pytest.approx(900), 8, "the new budget")
    assert fleet_of(proc)["budget"] == 900


def test_a_bucket_deleted_under_the_fleet_is_created_again(
    nats_server: NatsServer, sidecar_factory: Any
) -> None:
    import asyncio
    import json

    import nats

    proc = sidecar_factory(member_config(nats_server.url, "solo", holdS=30))
    wait_for(lambda: fleet_of(proc)["mode"] == "shared", 10, "shared")

    async def request(subject: str) -> dict[str, Any]:
        nc = await nats.connect(nats_server.url)
        try:
            return json.loads((await nc.request(subject, b"", timeout=5)).data)
        finally:
            await nc.close()

    assert asyncio.run(request("$JS.API.STREAM.DELETE.KV_fleet_test"))["success"] is True
    failed = fleet_of(proc)["counters"]["putsFailed"]
    wait_for(lambda: fleet_of(proc)["counters"]["putsFailed"] > failed, 5, "an unanswered put")
    ok = fleet_of(proc)["counters"]["putsOk"]
    wait_for(lambda: fleet_of(proc)["counters"]["putsOk"] > ok + 2, 10, "puts acknowledged again")
    info = asyncio.run(request("$JS.API.STREAM.INFO.KV_fleet_test"))
    assert info["config"]["max_msgs_per_subject"] == 1 and info["state"]["num_subjects"] == 1
    assert fleet_of(proc)["mode"] == "shared"


def test_demand_shares_follow_the_offered_load(nats_server: NatsServer, sidecar_factory: Any) -> None:
    """One member flooded, one idle: in demand mode the busy one gets its floor plus the rest of the budget,
    the idle one its floor (minShare 0.2 of an equal share: 60 msg/s); the fleet stays within the budget."""
    procs = [
        sidecar_factory(member_config(nats_server.url, f"m{i}", shareMode="demand", minShare=0.2))
        for i in range(2)
    ]
    wait_for(lambda: ceilings(procs) == pytest.approx([BUDGET / 2] * 2), 10, "equal while nobody offers")
    hub = HubCounter(nats_server.port, "flood.>")
    try:
        with Flood(procs[0].ports["nats"], "flood.busy", 700):
            wait_for(
                lambda: ceilings(procs) == pytest.approx([BUDGET - 60, 60], rel=0.05), 10, "busy 540, idle 60"
            )
            before, t0 = hub.count, time.monotonic()
            time.sleep(5)
            rate = (hub.count - before) / (time.monotonic() - t0)
        print(f"demand mode, one member flooded at 700 msg/s: fleet forwarded {rate:.0f} msg/s")
        assert (BUDGET - 60) * 0.9 <= rate <= BUDGET * 1.1
    finally:
        hub.close()
