"""Write k8s/base/prometheusrule.yaml from prometheus/alerts.yaml, the one source of the alert rules.

python prometheus/render_prometheusrule.py          # (make rules) rewrite the PrometheusRule
python prometheus/render_prometheusrule.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "k8s" / "base" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from prometheus/alerts.yaml by prometheus/render_prometheusrule.py (`make rules`): edit that
# file, not this one. tests/deploy/test_alerts.py fails when the two disagree.
# Your Prometheus' ruleSelector may require an extra label (e.g. release: kube-prometheus-stack): add it in
# an overlay.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL expressions) as literal blocks, everything else as PyYAML does."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(alerts_text: str) -> str:
    """The PrometheusRule manifest holding the groups of an alerts file."""
    groups = yaml.safe_load(alerts_text)["groups"]
    rule: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "kpi-sidecar-alerts", "labels": {"app.kubernetes.io/name": "kpi-sidecar"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    wanted = render(ALERTS.read_text())
    if args.check:
        if PROMETHEUS_RULE.read_text() != wanted:
            print(f"{PROMETHEUS_RULE} is out of date: run `make rules`", file=sys.stderr)
            return 1
        return 0
    PROMETHEUS_RULE.write_text(wanted)
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
