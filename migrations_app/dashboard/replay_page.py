"""The replay page (issue 17, item 3): a plan's latest replay on one page - the gate table, each
metric's interval, the per-tag breakdown, how stable the candidate was across its repeats, the
cost and time, and the worst items side by side (request, reference, control, candidate, their
scores, the judge's reason).

It reads the replay's stored summary and its item rows (``replay.decide`` writes both when the
replay is decided), the calls' progress in one GROUP BY, and the worst items through their
index: a handful of queries whatever the dataset's size (bench/bench_replay.py: 10,000 items x
3 repeats)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from migrations_app.dashboard.views import _plan, plan_viewer_required
from migrations_app.replay import selectors


def replay_context(plan: Any) -> dict[str, Any]:
    """What the page (and the report's replay section) shows of the plan's latest replay."""
    run = selectors.latest_run(plan)
    if run is None:
        return {"run": None}
    summary = run.summary or {}
    gates = summary.get("gates", [])
    return {
        "run": run,
        "status": selectors.run_status(run),
        "gates": gates,
        "metrics": sorted((summary.get("metrics") or {}).items()),
        "gate_names": [g["gate"] for g in gates],
        "by_tag": [
            (tag, row.get("items", 0), [row.get(name) for name in (g["gate"] for g in gates)])
            for tag, row in (summary.get("by_tag") or {}).items()
        ],
        "stability": sorted((summary.get("stability") or {}).items()),
        "worst": selectors.worst_items(run) if run.finished_at else [],
    }


@plan_viewer_required
@require_GET
def plan_replay(request: HttpRequest, key: str) -> HttpResponse:
    plan = _plan(key)
    return render(request, "turnout/replay.html", {"plan": plan, **replay_context(plan)})
