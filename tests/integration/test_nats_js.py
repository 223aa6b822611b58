"""nats.js (npm package `nats`) through the sidecar: a second, independent client implementation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.conftest import SidecarProcess

JS_DIR = Path(__file__).resolve().parent.parent / "js"


def test_nats_js_request_reply_headers_and_no_responders(sidecar: SidecarProcess) -> None:
    node = shutil.which("node")
    assert node, "node is required (make test installs nodejs)"
    assert (JS_DIR / "node_modules" / "nats").is_dir(), "run `make node-deps` (make test does)"
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
