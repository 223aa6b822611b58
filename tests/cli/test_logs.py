"""Start-up and logs as an operator reads them: one format per process, no line twice, a warning for an
admin port open to other machines without a token."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from proxy.nats.protocol import SPEEDUPS
from tests.conftest import NatsServer, free_port, sidecar_config

PLAIN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
OPEN_ADMIN = "the admin API listens on 0.0.0.0 without a token"


def lines_of(sidecar: Any) -> list[str]:
    return [line for line in sidecar.log().splitlines() if line.strip()]


def through_shutdown(sidecar: Any) -> list[str]:
    assert sidecar.terminate() == 0
    return lines_of(sidecar)


def test_plain_logs_by_default_each_line_once(sidecar_factory: Any, workdir: Path) -> None:
    # The upstream is down for the first seconds: its warning is logged once, not at every retry.
    down = f"nats://127.0.0.1:{free_port()}"
    sidecar = sidecar_factory(sidecar_config(down, upstream={"servers": [down], "connectTimeoutMs": 200}))
    lines = through_shutdown(sidecar)
    assert lines and all(PLAIN.match(line) for line in lines), lines
    messages = [PLAIN.sub("", line) for line in lines]
    assert len(messages) == len(set(messages)), messages
    ready = [m for m in messages if m.startswith("ready: ")]
    parser = "C scanner" if SPEEDUPS else "pure Python"
    assert ready == [
        f"ready: NATS {sidecar.nats_url}, HTTP ingest {sidecar.http_url}, admin {sidecar.admin_url} "
        f"(parser: {parser})"
    ]
    assert sum(f"upstream {down} unavailable" in m for m in messages) == 1
    # Scripts read the ports from the ports file, which a clean exit removes.
    assert not sidecar.ports_file.exists()


def test_json_logs_for_collectors(sidecar_factory: Any, nats_server: NatsServer) -> None:
    sidecar = sidecar_factory(sidecar_config(nats_server.url), args=("--log-format", "json"))
    lines = through_shutdown(sidecar)
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    (ready,) = [e for e in entries if e.get("event") == "ready"]
    assert ready["ports"] == sidecar.ports and ready["urls"]["admin"] == sidecar.admin_url
    assert any(
        e["logger"] == "proxy.upstream.connection" and "upstream connected" in e["message"] for e in entries
    )


@pytest.mark.parametrize(
    ("admin", "token", "warned"),
    [("0.0.0.0:0", None, True), ("0.0.0.0:0", "s3cret", False), ("127.0.0.1:0", None, False)],
)
def test_a_warning_when_the_admin_port_is_open_without_a_token(
    sidecar_factory: Any, nats_server: NatsServer, admin: str, token: str | None, warned: bool
) -> None:
    config = sidecar_config(nats_server.url, listen={"admin": admin})
    env = {"KPI_SIDECAR_ADMIN_TOKEN": token} if token else {"KPI_SIDECAR_ADMIN_TOKEN": ""}
    sidecar = sidecar_factory(config, env=env)
    warnings = [line for line in lines_of(sidecar) if OPEN_ADMIN in line]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert (
            " WARNING proxy: " in warnings[0]
            and "set admin.token (or KPI_SIDECAR_ADMIN_TOKEN)" in warnings[0]
        )
