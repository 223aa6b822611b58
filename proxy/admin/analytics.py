"""Analytics of the admin API: the level transitions (degradation history) and the tuning
recommendations drawn from the metric history (proxy/admin/recommendations.py holds the rules)."""

from __future__ import annotations

import time

from aiohttp import web

from proxy.admin import signals_view
from proxy.admin.history import INDEX
from proxy.admin.http import envelope, finite, wall, wall_offset
from proxy.admin.keys import HISTORY_KEY, SIDECAR_KEY
from proxy.admin.metrics import spool_state
from proxy.admin.recommendations import WINDOW_S, LevelChange, recommend
from proxy.admin.responses import DegradationHistory, Recommendations, Transition


async def get_degradation_history(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    engine = sidecar.engine
    offset = wall_offset(sidecar.clock)
    transitions = [
        Transition(
            timestamp=wall(offset, t.timestamp_monotonic),  # type: ignore[arg-type]
            from_level=t.from_level.label,  # type: ignore[arg-type]
            to=t.to_level.label,  # type: ignore[arg-type]
            from_value=int(t.from_level),
            to_value=int(t.to_level),
            load_percent=finite(t.load_percent),
            dominant_signal=t.dominant_signal,
        )
        for t in engine.history()
    ]
    return envelope(
        DegradationHistory(
            current_level=engine.level.label,  # type: ignore[arg-type]
            count=len(transitions),
            transitions=transitions,
        )
    )


async def get_recommendations(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    engine = sidecar.engine
    now_wall = time.time()
    offset = now_wall - sidecar.clock()
    changes = [
        LevelChange(t.timestamp_monotonic + offset, int(t.from_level), int(t.to_level))
        for t in engine.history()
    ]
    samples = request.app[HISTORY_KEY].recent(WINDOW_S, now_wall)
    found = recommend(
        samples, changes, engine.config, spool_messages=spool_state(sidecar)["messages"], window_s=WINDOW_S
    )
    driving = signals_view.recommendation(engine.snapshot(sidecar.clock()), engine.config, samples, INDEX)
    if driving is not None:
        found.append(driving)
    return envelope(Recommendations(window_seconds=WINDOW_S, samples=len(samples), recommendations=found))
