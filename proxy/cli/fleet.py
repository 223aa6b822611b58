"""`kpi-sidecar fleet`: the fleet as one sidecar sees it, as a table (GET /api/backpressure/fleet)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from proxy.cli.status import fetch_api

COLUMNS = ("MEMBER", "HOST", "LEVEL", "LOAD", "OFFERED/s", "FORWARDED/s", "SHARE/s", "QUEUE", "SPOOL", "SEEN")


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_fleet(admin: str, data: dict[str, Any]) -> str:
    """The header line and the member table of a /fleet body."""
    if not data.get("enabled"):
        return (
            f"kpi-sidecar at {admin}: no fleet configured (add `fleet: {{name: <service>}}`, docs/fleet.md)"
        )
    budget = data.get("budget")
    levels = data.get("levels") or {}
    head = (
        f"fleet {data.get('name')} (bucket {data.get('bucket')}) seen by {data.get('memberId')} at {admin}: "
        f"{len(data.get('members') or [])} live members, mode {data.get('mode')}, "
        + (f"budget {budget:g} msg/s ({data.get('shareMode')}), " if budget is not None else "no budget, ")
        + f"ceiling here {_num(data.get('rateCeiling'), 1)} msg/s, "
        f"fleet level max {levels.get('max', 0)} median {levels.get('median', 0)}"
    )
    lines = [head]
    if not data.get("kvAvailable"):
        hold = data.get("holdRemainingSeconds")
        lines.append(
            f"  KV unavailable: {data.get('kvError') or 'no answer yet'}"
            + (f" (last share held {hold:.0f} s more)" if hold is not None else "")
        )
    rows = [COLUMNS]
    for m in data.get("members") or []:
        rows.append(
            (
                m["id"] + (" *" if m.get("own") else ""),
                m.get("host", ""),
                m.get("level", ""),
                f"{m.get('loadPercent', 0):.0f}%",
                _num(m.get("offeredRate"), 1),
                _num(m.get("forwardedRate"), 1),
                _num(m.get("share"), 1),
                str(m.get("queue", 0)),
                str(m.get("spool", 0)),
                f"{m.get('lastSeenSecondsAgo', 0):.1f}s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        lines.append(
            "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def print_fleet(admin_url: str | None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the table; 1 with a clear message when the admin API cannot be reached or answers an error."""
    found = fetch_api("fleet", admin_url, "/api/backpressure/fleet", err or sys.stderr)
    if found is None:
        return 1
    admin, data = found
    print(format_fleet(admin, data), file=out or sys.stdout)
    return 0
