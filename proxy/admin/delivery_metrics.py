"""Metrics of the delivery side: merged interest (upstream subscriptions and their members) and the
delivery flow (the upstream not read while applications are behind). Read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from proxy.sidecar import Sidecar


def metric_families(sidecar: Sidecar | None) -> Iterator[Metric]:
    """The families, with their samples when `sidecar` is given (None: for `describe`)."""
    upstream_subs = GaugeMetricFamily(
        "kpi_sidecar_upstream_subscriptions",
        "Subscriptions on the upstream connection for applications: one per subject of their non-queue "
        "subscriptions (merged interest), one per queue subscription.",
    )
    members = GaugeMetricFamily(
        "kpi_sidecar_subscriptions",
        "Application subscriptions behind those upstream subscriptions (retiring ones included).",
    )
    refused = CounterMetricFamily(
        "kpi_sidecar_subscriptions_refused",
        "SUBs refused at clients.maxSubscriptions (per connection) or clients.maxTotalSubscriptions.",
    )
    held = GaugeMetricFamily(
        "kpi_sidecar_upstream_read_held",
        "1 while the upstream socket is not read because an application is behind on its deliveries.",
    )
    holds = CounterMetricFamily(
        "kpi_sidecar_upstream_read_holds",
        "Times the upstream socket stopped being read because an application was behind on its "
        "deliveries (at most delivery_flow.MAX_HOLD_S each).",
    )
    held_seconds = CounterMetricFamily(
        "kpi_sidecar_upstream_read_held_seconds",
        "Seconds the upstream socket was not read because an application was behind (ended holds).",
    )
    if sidecar is not None:
        deliveries, flow = sidecar.deliveries, sidecar.delivery_flow
        upstream_subs.add_metric([], len(deliveries.interests))
        members.add_metric([], deliveries.members)
        refused.add_metric([], deliveries.refused)
        held.add_metric([], 1.0 if flow.held else 0.0)
        holds.add_metric([], flow.holds)
        held_seconds.add_metric([], flow.held_seconds)
    yield from (upstream_subs, members, refused, held, holds, held_seconds)
