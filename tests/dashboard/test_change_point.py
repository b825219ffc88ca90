"""The change point on the dashboard (issue 20): when a guardrail's change detector fired, the
page marks the moment since which the candidate has been worse on that metric's chart and on
its bounds chart; a change that did not fire, or a malformed one, marks nothing."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from migrations_app.dashboard import charts, selectors, svg
from migrations_app.models import Evaluation
from tests.dashboard.data import feed, running_plan
from tests.dashboard.test_views import staff


def test_a_marker_is_drawn_inside_the_range_only_and_escaped() -> None:
    line = svg.Series("control", [(0.0, 1.0), (600.0, 2.0)])
    inside = svg.render(svg.Chart("c", [line], markers=[svg.Marker("<worse> since 00:05", 300.0)]))
    assert inside.count('class="marker"') == 1
    assert "&lt;worse&gt; since 00:05" in inside and "<worse>" not in inside
    outside = svg.render(svg.Chart("c", [line], markers=[svg.Marker("late", 9_000.0)]))
    assert 'class="marker"' not in outside


def _evaluation(plan, change) -> Evaluation:
    guardrail = {
        "metric": "error_rate",
        "action": "rollback",
        "wants": "rollback",
        "verdict": {
            "status": "regressed",
            "summary": "change detected: candidate error rate has been 3.1x control since …",
            "estimate": 3.1,
            "lower": 2.0,
            "upper": None,
            "tolerance": 1.5,
            "tolerance_kind": "relative",
            "harm": "increase",
            "notes": [],
        },  # fmt: skip
    }
    if change is not None:
        guardrail["change"] = change
    return Evaluation.objects.create(
        plan=plan, run=plan.current_run, stage=plan.current_stage, plan_version=plan.version,
        action="rollback", decision={"guardrails": [guardrail]},
        bounds={"error_rate": {"lower": 2.0, "upper": None}},
        created_at=timezone.now(),
    )  # fmt: skip


def _chart(html: str, name: str) -> str:
    found = re.search(rf'<div data-chart="{name}">(.*?)</div>', html, re.S)
    assert found, name
    return found.group(1)


@pytest.mark.django_db
def test_the_dashboard_marks_the_change_point_on_the_metrics_charts() -> None:
    plan = running_plan("cp", hours_ago=1.0)
    start = plan.current_stage.started_at
    for arm in ("control", "candidate"):
        feed(plan.current_stage, start=start, minutes=50, per_minute=20, arm=arm)
    since = (start + timedelta(minutes=40)).replace(second=0, microsecond=0)
    _evaluation(plan, {"fired": True, "since": since.isoformat(), "since_window": 40})

    html = staff("viewer", operate=False).get("/plans/cp/live").content.decode()

    label = f"error rate worse since {since:%H:%M}"
    assert label in _chart(html, "errors") and 'class="marker"' in _chart(html, "errors")
    assert label in _chart(html, "bound-error_rate")
    for other in ("requests", "latency", "satisfaction", "cost"):
        assert 'class="marker"' not in _chart(html, other)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [None, {"fired": False, "since": "2025-06-02T14:00:00+00:00"}, {"fired": True, "since": "x"}],
    ids=["none", "not fired", "malformed"],
)
def test_no_change_point_no_marker(change) -> None:
    plan = running_plan("cp", hours_ago=1.0)
    evaluation = _evaluation(plan, change)
    (view,) = selectors.verdict_views(evaluation)
    assert view.changed_since is None and charts.change_markers([view]) == {}
