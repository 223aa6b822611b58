"""nats.go through the sidecar: the third client implementation the product promises to serve unmodified.

The client library is Debian's `golang-github-nats-io-go-nats-dev` (nats.go 1.22), built with Debian's
Go in GOPATH mode, so no module registry is needed (`make test` installs both packages).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.conftest import SidecarProcess, eventually, open_breaker, settle

GO_SOURCE = Path(__file__).resolve().parent.parent / "go" / "natsgo_client.go"
GOPATH = "/usr/share/gocode"


@pytest.fixture(scope="session")
def natsgo_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    assert go, "go is required (make test installs golang-go)"
    assert Path(GOPATH, "src/github.com/nats-io/nats.go").is_dir(), (
        "nats.go is required (make test installs golang-github-nats-io-go-nats-dev)"
    )
    out_dir = tmp_path_factory.mktemp("natsgo")
    binary = out_dir / "natsgo_client"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(out_dir / "cache")}
    build = subprocess.run(
        [go, "build", "-o", str(binary), str(GO_SOURCE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    return binary


async def test_nats_go_request_reply_queue_groups_publish_and_drain(
    sidecar: SidecarProcess, natsgo_client: Path
) -> None:
    count = 20_000
    hub = await nats.connect(sidecar.upstream.url)  # type: ignore[attr-defined]
    got = 0

    async def on_msg(_msg: object) -> None:
        nonlocal got
        got += 1

    await hub.subscribe("go.count", cb=on_msg)

    async def answer(msg: Any) -> None:
        await msg.respond(b"answered")

    await hub.subscribe("go.refused", cb=answer)  # there is a responder: only the sidecar refuses
    await settle(hub)
    open_breaker(sidecar, "go.refused")
    proc = await asyncio.create_subprocess_exec(
        str(natsgo_client),
        sidecar.nats_url,
        sidecar.upstream.url,  # type: ignore[attr-defined]
        str(count),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{stderr.decode()}\nsidecar log:\n{sidecar.log()[-3000:]}"
    results = json.loads(stdout.decode().strip().splitlines()[-1])
    assert results["version"].startswith("1.")
    assert results["toApp"] == {"data": "app:one", "seen": "from-direct"}
    assert results["toDirect"] == {"data": "direct:two", "seen": "from-app"}
    assert results["noResponders"]["isNoResponders"] is True
    assert results["noResponders"]["ms"] < 1000
    # A request the sidecar refuses is reported as nats.ErrNoResponders, at once.
    assert results["refused"]["isNoResponders"] is True, results["refused"]
    assert results["refused"]["ms"] < 1000
    # Every message to exactly one member of the queue group, and both members used.
    queue = results["queue"]
    assert queue["a"] + queue["b"] == 200 and queue["a"] > 0 and queue["b"] > 0
    # Flush() returned, so the sidecar took every publish in charge: all of them reach the hub.
    await eventually(lambda: got >= count)
    assert got == count
    status = sidecar.status()
    assert status["droppedByReason"] == {"circuit_breaker": 1}  # the refused request, and nothing else
    assert status["refusedRequests"] == {"circuit_breaker": 1}
    # Drain() unsubscribed and closed: nothing of this application is left subscribed upstream.
    left = [s for s in sidecar.upstream.subscriptions_of("kpi-sidecar") if s.startswith("go.")]  # type: ignore[attr-defined]
    assert left == []
    await hub.close()
