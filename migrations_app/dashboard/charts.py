"""The dashboard's charts: window series and evaluation bounds drawn as SVG (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from migrations_app import stats
from migrations_app.dashboard import selectors as sel
from migrations_app.dashboard import svg
from migrations_app.stats import ArmAggregates

ARM_COLORS = {"control": svg.CONTROL, "candidate": svg.CANDIDATE}
MAX_ERROR_KINDS = 3

Windows = Mapping[str, Sequence[tuple[datetime, ArmAggregates]]]


def _points(
    rows: Sequence[tuple[datetime, ArmAggregates]], figure: Callable[[ArmAggregates], float | None]
) -> list[tuple[float, float | None]]:
    return [(t.timestamp(), figure(agg)) for t, agg in rows]


def _per_arm(
    windows: Windows, figure: Callable[[ArmAggregates], float | None], suffix: str = ""
) -> list[svg.Series]:
    return [
        svg.Series(f"{arm}{suffix}", _points(windows.get(arm, ()), figure), ARM_COLORS[arm])
        for arm in sel.ARMS
    ]


def _kind_rate(kind: str) -> Callable[[ArmAggregates], float | None]:
    def rate(a: ArmAggregates) -> float | None:
        return a.errors_by_kind.get(kind, 0) / a.requests if a.requests else None

    return rate


def _ms(v: float) -> str:
    return f"{v:,.0f}"


def _pct(v: float) -> str:
    return f"{v * 100:.3g}%"


def _usd(v: float) -> str:
    return f"${v:.3g}"


def window_charts(
    windows: Windows, *, start: datetime, end: datetime, step_minutes: int
) -> list[tuple[str, str]]:
    """(name, svg) per chart: request rate, error rate by kind, p50/p95 latency, p95 ttft,
    satisfaction, cost per request, each per arm."""
    x0, x1 = start.timestamp(), end.timestamp()
    kinds: Counter[str] = Counter()
    for arm in sel.ARMS:
        for _, agg in windows.get(arm, ()):
            kinds.update(agg.errors_by_kind)
    top = [k for k, _ in kinds.most_common(MAX_ERROR_KINDS)]
    error_series = _per_arm(windows, sel.error_rate, " all")
    for i, kind in enumerate(top):
        for arm in sel.ARMS:
            error_series.append(
                svg.Series(
                    f"{arm} {kind}",
                    _points(windows.get(arm, ()), _kind_rate(kind)),
                    svg.PALETTE[(2 + i) % len(svg.PALETTE)],
                    dashed=arm == "candidate",
                )
            )
    latency = _per_arm(windows, lambda a: sel.quantile(a.latency, 0.5), " p50") + [
        svg.Series(s.label, s.points, s.color, dashed=True)
        for s in _per_arm(windows, lambda a: sel.quantile(a.latency, 0.95), " p95")
    ]
    charts = [
        (
            "requests",
            svg.Chart(
                "Requests per minute",
                _per_arm(windows, lambda a: a.requests / step_minutes),
                fmt=lambda v: f"{v:,.3g}",
                start=x0,
                end=x1,
            ),
        ),
        ("errors", svg.Chart("Error rate by kind", error_series, fmt=_pct, start=x0, end=x1)),
        (
            "latency",
            svg.Chart("Latency p50 and p95", latency, unit="ms", fmt=_ms, start=x0, end=x1),
        ),
        (
            "ttft",
            svg.Chart(
                "Time to first token p95",
                _per_arm(windows, lambda a: sel.quantile(a.ttft, 0.95)),
                unit="ms",
                fmt=_ms,
                start=x0,
                end=x1,
            ),
        ),
        (
            "satisfaction",
            svg.Chart(
                "Satisfaction (mean feedback, 0-1)",
                _per_arm(windows, sel.satisfaction),
                fmt=lambda v: f"{v:.2f}",
                start=x0,
                end=x1,
            ),
        ),
        (
            "cost",
            svg.Chart(
                "Cost per request",
                _per_arm(windows, sel.cost_per_request),
                fmt=_usd,
                start=x0,
                end=x1,
            ),
        ),
    ]
    return [(name, svg.render(chart)) for name, chart in charts]


def bound_charts(
    bounds: Sequence[tuple[datetime, Mapping[str, Any]]],
    verdicts: Sequence[sel.GuardrailView],
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
            rules.append(svg.Rule(f"tolerance {limit:.3g}", limit))
        chart = svg.Chart(
            f"{v.label}: bounds vs tolerance",
            [
                svg.Series("upper bound", upper, svg.CANDIDATE),
                svg.Series("lower bound", lower, svg.CONTROL),
            ],
            rules=rules,
            start=start.timestamp(),
            end=end.timestamp(),
        )
        out.append((f"bound-{v.metric}", svg.render(chart)))
    return out
