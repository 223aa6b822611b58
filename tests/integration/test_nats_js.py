"""nats.js (npm package `nats`) through the sidecar: a second, independent client implementation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import SidecarProcess, open_breaker

# A responder on a direct connection, in its own process (this test is synchronous).
RESPONDER = """
import asyncio, sys, nats
async def main(url, subject):
    nc = await nats.connect(url)
    async def answer(msg):
        await msg.respond(b"answered")
    await nc.subscribe(subject, cb=answer)
    await nc.flush(); await nc.flush()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main(*sys.argv[1:]))
"""

JS_DIR = Path(__file__).resolve().parent.parent / "js"


def test_nats_js_request_reply_headers_and_no_responders(sidecar: SidecarProcess) -> None:
    node = shutil.which("node")
    assert node, "node is required (make test installs nodejs)"
    assert (JS_DIR / "node_modules" / "nats").is_dir(), "run `make node-deps` (make test does)"
    hub = subprocess.Popen(  # a responder upstream: only the sidecar refuses js.refused
        [sys.executable, "-c", RESPONDER, sidecar.upstream.url, "js.refused"],  # type: ignore[attr-defined]
        stdout=subprocess.PIPE,
    )
    assert hub.stdout is not None and hub.stdout.readline().strip() == b"ready"
    open_breaker(sidecar, "js.refused")
    out = subprocess.run(
        [node, "request_reply.mjs", sidecar.nats_url, sidecar.upstream.url],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"node failed:\n{out.stderr}\nsidecar log:\n{sidecar.log()[-3000:]}"
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["toApp"] == {"data": "app:one", "seen": "from-direct"}
    assert results["toDirect"] == {"data": "direct:two", "seen": "from-app"}
    assert results["noResponders"]["isNoResponders"] is True
    assert results["noResponders"]["ms"] < 1000
    # A request the sidecar refuses is reported as ErrorCode.NoResponders ("503"), at once.
    assert results["refused"]["isNoResponders"] is True, results["refused"]
    assert results["refused"]["ms"] < 1000
    hub.kill()
    hub.wait(5)
