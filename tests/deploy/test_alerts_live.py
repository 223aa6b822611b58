"""Each operations alert (and the two rules that became fractions) on real sidecars' /metrics.

The sidecars run against real nats-server processes and are driven into each failure (upstream stopped,
spool filling, critical messages waiting or dropped, memory over budget, a refused configuration file, the
process killed). Each scrape of /metrics becomes one plateau of promtool input series (7 minutes of the
same values, so that every `for:` can elapse), with `up` 1 for a scrape that answered and 0 for one that
did not, as Prometheus records it. `promtool test rules` then evaluates prometheus/alerts.yaml itself
(annotations removed: their wording is pinned by prometheus/alerts_test.yaml) and must find exactly the
expected alerts firing at the end of each plateau, and none at the end of the healthy one.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NatsServer, SidecarProcess, eventually, sidecar_config
from tests.deploy.metric_names import ALERT_RULES

PLATEAU_MIN = 7  # longer than the longest `for:` (5m)
JOB = "kpi-sidecar"
P = "/api/backpressure"
Sample = tuple[str, tuple[tuple[str, str], ...], float]


def scrape(sidecar: SidecarProcess) -> list[Sample] | None:
    """Every sample of GET /metrics, or None when the scrape fails (the target is down)."""
    try:
        with urllib.request.urlopen(sidecar.admin_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("kpi_")
    ]


@dataclass
class Timeline:
    """The scrapes of one sidecar, and the alerts expected at the end of each one's plateau."""

    instance: str
    scrapes: list[list[Sample] | None] = field(default_factory=list)
    expected: list[dict[str, bool]] = field(default_factory=list)

    def take(self, sidecar: SidecarProcess, **alerts: bool) -> None:
        self.scrapes.append(scrape(sidecar))
        self.expected.append(alerts)


def series(timeline: Timeline) -> list[dict[str, str]]:
    """promtool input_series: each scrape held for PLATEAU_MIN minutes; stale once a series is gone."""
    keys: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
    n = len(timeline.scrapes)
    for index, samples in enumerate(timeline.scrapes):
        for name, labels, value in samples or []:
            keys.setdefault((name, labels), ["stale"] * n)[index] = repr(float(value))
    up = [("1" if samples is not None else "0") for samples in timeline.scrapes]
    keys[("up", ())] = up
    out = []
    for (name, labels), values in keys.items():
        all_labels = {**dict(labels), "job": JOB, "instance": timeline.instance}
        selector = ", ".join(f'{k}="{v}"' for k, v in sorted(all_labels.items()))
        points = " ".join(" ".join([value] * PLATEAU_MIN) for value in values)
        out.append({"series": f"{name}{{{selector}}}", "values": points})
    return out


def rules_without_annotations() -> dict[str, Any]:
    data = yaml.safe_load(ALERT_RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return data


def check_alerts(promtool: str, tmp_path: Path, timeline: Timeline) -> None:
    """promtool finds, at the end of each plateau, the expected alerts firing (or not)."""
    rules = rules_without_annotations()
    severity = {r["alert"]: r["labels"]["severity"] for g in rules["groups"] for r in g["rules"]}
    checks = []
    for index, alerts in enumerate(timeline.expected):
        for alertname, firing in alerts.items():
            labels = {"severity": severity[alertname]}
            if alertname != "KpiSidecarAbsent":  # absent() keeps no labels
                labels |= {"job": JOB, "instance": timeline.instance}
            checks.append(
                {
                    "eval_time": f"{(index + 1) * PLATEAU_MIN - 1}m",
                    "alertname": alertname,
                    "exp_alerts": [{"exp_labels": labels}] if firing else [],
                }
            )
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rules))
    test = {
        "rule_files": ["alerts.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series(timeline), "alert_rule_test": checks}],
    }
    (tmp_path / "live_test.yaml").write_text(yaml.safe_dump(test, width=1000))
    result = subprocess.run(
        [promtool, "test", "rules", "live_test.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{timeline.instance}:\n{result.stdout}\n{result.stderr}"


def metric(sidecar: SidecarProcess, name: str) -> float:
    return sidecar.metric(name)


def publish_http(sidecar: SidecarProcess, subject: str, body: bytes, priority: str) -> int:
    request = urllib.request.Request(
        f"{sidecar.http_url}/publish/{subject}", data=body, method="POST", headers={"KPI-Priority": priority}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


async def test_upstream_stopped_spool_and_critical_queue(
    promtool: str, tmp_path: Path, nats_server: NatsServer, sidecar_factory: Any, workdir: Path
) -> None:
    # A: a small spool that critical messages go to 1 s into an outage. B: no spool, a 100-message queue.
    spooling = sidecar_factory(
        sidecar_config(
            nats_server.url,
            spool={"path": str(workdir / "spool-a"), "maxBytes": 4096, "upstreamDownThresholdMs": 1000},
        )
    )
    queueing = sidecar_factory(
        sidecar_config(
            nats_server.url, spool={"path": None}, backpressure={"maxQueueSize": 100, "enableSampling": False}
        )
    )
    a, b = Timeline("sidecar-a:3000"), Timeline("sidecar-b:3000")
    quiet = {"KpiSidecarUpstreamDisconnected": False}
    a.take(spooling, **quiet, KpiSidecarSpoolGrowing=False, KpiSidecarSpoolNearlyFull=False)
    b.take(queueing, **quiet, KpiSidecarCriticalMessagesDelayed=False, BackpressureQueueHigh=False)

    nats_server.stop()
    await eventually(lambda: metric(queueing, "kpi_backpressure_upstream_connected") == 0, timeout=10)
    app = await nats.connect(queueing.nats_url, allow_reconnect=False)
    try:
        await app.publish("kpi.payment.settled", b"must arrive", headers={"KPI-Priority": "critical"})
        for i in range(90):
            await app.publish(f"kpi.analytics.view.{i % 3}", b"x" * 32)
        await app.flush()
    finally:
        await app.close()
    queued_at = asyncio.get_running_loop().time()
    assert metric(queueing, "kpi_backpressure_queue_size") == 91

    # The spool grows with each batch of critical messages, up to more than 80 % of its 4096 bytes.
    await eventually(lambda: metric(spooling, "kpi_backpressure_upstream_connected") == 0, timeout=10)
    body = b"p" * 150
    growing = {"KpiSidecarUpstreamDisconnected": True, "KpiSidecarSpoolGrowing": True}
    for step in range(3):
        while metric(spooling, "kpi_spool_bytes") < 4096 * (0.3, 0.6, 0.85)[step]:
            spooled = metric(spooling, "kpi_spool_messages")
            assert publish_http(spooling, "kpi.payment.settled", body, "critical") == 202
            await eventually(lambda n=spooled: metric(spooling, "kpi_spool_messages") > n, timeout=10)
        # The first two steps: growing, not yet near full; the last: both.
        a.take(spooling, **growing, KpiSidecarSpoolNearlyFull=step == 2)
    (tmp_path / "a").mkdir()
    check_alerts(promtool, tmp_path / "a", a)

    # B's critical message has waited more than 30 s when this scrape is taken.
    await asyncio.sleep(max(0.0, 31 - (asyncio.get_running_loop().time() - queued_at)))
    assert metric(queueing, "kpi_backpressure_oldest_critical_age_seconds") > 30
    b.take(
        queueing,
        KpiSidecarUpstreamDisconnected=True,
        KpiSidecarCriticalMessagesDelayed=True,
        BackpressureQueueHigh=True,
    )
    (tmp_path / "b").mkdir()
    check_alerts(promtool, tmp_path / "b", b)


async def test_memory_reload_refused_and_the_sidecar_killed(
    promtool: str, tmp_path: Path, nats_server: NatsServer, sidecar_factory: Any
) -> None:
    config = sidecar_config(nats_server.url)
    sidecar = sidecar_factory(config)
    # The memory signal is sampled once a second: wait for the first sample.
    await eventually(lambda: metric(sidecar, "kpi_backpressure_memory_usage_mb") > 0, timeout=10)
    t = Timeline("sidecar-c:3000")
    t.take(sidecar, BackpressureMemoryHigh=False, KpiSidecarConfigReloadFailed=False, KpiSidecarDown=False)
    # A budget below what the process uses (through the API, as an operator would try it).
    request = urllib.request.Request(
        f"{sidecar.admin_url}{P}/config",
        data=json.dumps({"maxMemoryUsageMB": 1}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
    t.take(sidecar, BackpressureMemoryHigh=True, KpiSidecarConfigReloadFailed=False)
    # A configuration file the sidecar refuses: the previous one stays in force.
    sidecar.config_path.write_text(yaml.safe_dump(config) + "nope: 1\n")
    await eventually(lambda: metric(sidecar, "kpi_sidecar_config_reload_successful") == 0, timeout=10)
    t.take(sidecar, KpiSidecarConfigReloadFailed=True, KpiSidecarDown=False, KpiSidecarAbsent=False)
    sidecar.kill()
    t.take(
        sidecar,
        KpiSidecarDown=True,
        KpiSidecarAbsent=True,
        BackpressureMemoryHigh=False,
        KpiSidecarConfigReloadFailed=False,
    )
    assert t.scrapes[-1] is None
    check_alerts(promtool, tmp_path, t)


async def test_critical_messages_dropped_for_the_upstreams_max_payload(
    promtool: str, tmp_path: Path, nats_factory: Any, sidecar_factory: Any
) -> None:
    # Critical messages accepted while no upstream has told its max_payload; the server that comes up
    # takes at most 1024 bytes, so the queued 2 KiB ones can never go out.
    server = nats_factory(extra_conf="max_payload: 1024")
    server.stop()
    sidecar = sidecar_factory(sidecar_config(server.url, spool={"path": None}))
    t = Timeline("sidecar-d:3000")
    t.take(sidecar, KpiSidecarCriticalMessagesDropped=False)
    for _ in range(3):
        assert publish_http(sidecar, "kpi.payment.settled", b"p" * 2048, "critical") == 202
    server.start()
    await eventually(lambda: metric(sidecar, "kpi_backpressure_upstream_connected") == 1, timeout=15)
    with urllib.request.urlopen(sidecar.admin_url + "/metrics", timeout=5) as resp:
        assert 'kpi_streaming_critical_dropped_total{reason="max_payload"} 3.0' in resp.read().decode()
    t.take(sidecar, KpiSidecarCriticalMessagesDropped=True, KpiSidecarUpstreamDisconnected=False)
    check_alerts(promtool, tmp_path, t)
