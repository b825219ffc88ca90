"""The dashboard's charts: window series and evaluation bounds drawn as SVG (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from migrations_app.dashboard import figures, selectors, svg
from migrations_app.dashboard import format as fmt
from migrations_app.guardrails import stats
from migrations_app.guardrails.stats import ArmAggregates

ARM_COLORS = {"control": svg.CONTROL, "candidate": svg.CANDIDATE}
MAX_ERROR_KINDS = 3

Windows = Mapping[str, Sequence[tuple[datetime, ArmAggregates]]]

#: The window chart that shows a guardrail's metric: its change point is marked there too.
CHART_OF = {
    "error_rate": "errors",
    "latency_p95": "latency",
    "latency_p99": "latency",
    "ttft_p95": "ttft",
    "satisfaction": "satisfaction",
    "cost_per_request": "cost",
}


def change_marker(verdict: selectors.GuardrailView) -> svg.Marker | None:
    """The guardrail's change point (when its change detector fired) as a chart marker."""
    if verdict.changed_since is None:
        return None
    return svg.Marker(
        f"{verdict.label} worse since {verdict.changed_since:%H:%M}",
        verdict.changed_since.timestamp(),
    )


def change_markers(verdicts: Sequence[selectors.GuardrailView]) -> dict[str, list[svg.Marker]]:
    """Markers by window chart name (:data:`CHART_OF`)."""
    out: dict[str, list[svg.Marker]] = {}
    for v in verdicts:
        marker = change_marker(v)
        if marker is not None and v.metric in CHART_OF:
            out.setdefault(CHART_OF[v.metric], []).append(marker)
    return out


def _points(
    rows: Sequence[tuple[datetime, ArmAggregates]], figure: Callable[[ArmAggregates], float | None]
) -> list[tuple[float, float | None]]:
    return [(t.timestamp(), figure(agg)) for t, agg in rows]


def _per_arm(
    windows: Windows, figure: Callable[[ArmAggregates], float | None], suffix: str = ""
) -> list[svg.Series]:
    return [
        svg.Series(f"{arm}{suffix}", _points(windows.get(arm, ()), figure), ARM_COLORS[arm])
        for arm in figures.ARMS
    ]


def _kind_rate(kind: str) -> Callable[[ArmAggregates], float | None]:
    def rate(a: ArmAggregates) -> float | None:
        return a.errors_by_kind.get(kind, 0) / a.requests if a.requests else None

    return rate


def window_charts(
    windows: Windows,
    *,
    start: datetime,
    end: datetime,
    step_minutes: int,
    verdicts: Sequence[selectors.GuardrailView] = (),
) -> list[tuple[str, str]]:
    """(name, svg) per chart: request rate, error rate by kind, p50/p95 latency, p95 ttft,
    satisfaction, cost per request, each per arm; a guardrail's change point (``verdicts``)
    marked on its metric's chart."""
    x0, x1 = start.timestamp(), end.timestamp()
    kinds: Counter[str] = Counter()
    for arm in figures.ARMS:
        for _, agg in windows.get(arm, ()):
            kinds.update(agg.errors_by_kind)
    top = [k for k, _ in kinds.most_common(MAX_ERROR_KINDS)]
    error_series = _per_arm(windows, figures.error_rate, " all")
    for i, kind in enumerate(top):
        for arm in figures.ARMS:
            error_series.append(
                svg.Series(
                    f"{arm} {kind}",
                    _points(windows.get(arm, ()), _kind_rate(kind)),
                    svg.PALETTE[(2 + i) % len(svg.PALETTE)],
                    dashed=arm == "candidate",
                )
            )
    latency = _per_arm(windows, lambda a: figures.quantile(a.latency, 0.5), " p50") + [
        svg.Series(s.label, s.points, s.color, dashed=True)
        for s in _per_arm(windows, lambda a: figures.quantile(a.latency, 0.95), " p95")
    ]
    charts = [
        (
            "requests",
            svg.Chart(
                "Requests per minute",
                _per_arm(windows, lambda a: a.requests / step_minutes),
                start=x0,
                end=x1,
            ),
        ),
        ("errors", svg.Chart("Error rate by kind", error_series, axis="%", start=x0, end=x1)),
        (
            "latency",
            svg.Chart("Latency p50 and p95", latency, unit="ms", axis="ms", start=x0, end=x1),
        ),
        (
            "ttft",
            svg.Chart(
                "Time to first token p95",
                _per_arm(windows, lambda a: figures.quantile(a.ttft, 0.95)),
                unit="ms",
                axis="ms",
                start=x0,
                end=x1,
            ),
        ),
        (
            "satisfaction",
            svg.Chart(
                "Satisfaction (mean feedback, 0-1)",
                _per_arm(windows, figures.satisfaction),
                start=x0,
                end=x1,
            ),
        ),
        (
            "cost",
            svg.Chart(
                "Cost per request",
                _per_arm(windows, figures.cost_per_request),
                axis="$",
                start=x0,
                end=x1,
            ),
        ),
    ]
    markers = change_markers(verdicts)
    return [
        (name, svg.render(replace(chart, markers=markers.get(name, ())))) for name, chart in charts
    ]


def bound_charts(
    bounds: Sequence[tuple[datetime, Mapping[str, Any]]],
    verdicts: Sequence[selectors.GuardrailView],
    *,
    start: datetime,
    end: datetime,
) -> list[tuple[str, str]]:
    """Per guardrail, its running confidence bounds over time against the tolerance line.
    The tolerance is drawn on the bounds' scale (``stats.threshold``)."""
    out = []
    for v in verdicts:
        lower = [(t.timestamp(), (b.get(v.metric) or {}).get("lower")) for t, b in bounds]
        upper = [(t.timestamp(), (b.get(v.metric) or {}).get("upper")) for t, b in bounds]
        rules = []
        if v.tolerance is not None:
            limit = stats.threshold(v.tolerance, v.tolerance_kind, v.harm)  # type: ignore[arg-type]
            rules.append(svg.Rule(f"tolerance {fmt.plain(limit)}", limit))
        chart = svg.Chart(
            f"{v.label}: bounds vs tolerance",
            [
                svg.Series("upper bound", upper, svg.CANDIDATE),
                svg.Series("lower bound", lower, svg.CONTROL),
            ],
            rules=rules,
            markers=[m for m in (change_marker(v),) if m is not None],
            start=start.timestamp(),
            end=end.timestamp(),
        )
        out.append((f"bound-{v.metric}", svg.render(chart)))
    return out
