"""Server-made SVG line charts (pure: no ORM, no clock, no network).

The dashboard and the report draw every chart here, so a page works with no script or
stylesheet from anywhere else: each chart is one self-contained ``<svg>`` element with its
colours inline. Labels are escaped; values that are None or not finite break the line
(a gap), they are never drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

from migrations_app.dashboard.format import axis_labels

CONTROL = "#2563eb"
CANDIDATE = "#ea580c"
PALETTE = (CONTROL, CANDIDATE, "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#64748b")


@dataclass(frozen=True, slots=True)
class Series:
    """One line: (unix seconds, value or None) points in time order."""

    label: str
    points: Sequence[tuple[float, float | None]]
    color: str = CONTROL
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    """A horizontal reference line (a tolerance)."""

    label: str
    value: float
    color: str = "#dc2626"


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical line at a moment (unix seconds): a guardrail's change point."""

    label: str
    at: float
    color: str = "#dc2626"


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    series: Sequence[Series]
    rules: Sequence[Rule] = field(default_factory=tuple)
    markers: Sequence[Marker] = field(default_factory=tuple)
    unit: str = ""
    # How the y ticks read (format.axis_labels): "%" fractions as percentages, "$" dollars,
    # "" or "ms" plain numbers.
    axis: str = ""
    start: float | None = None
    end: float | None = None


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About ``count`` round tick values covering [low, high] (1, 2, 5 times a power of 10)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = [round(first, 12)]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(round(first + len(ticks) * step, 12))
    return ticks


def _time_label(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%d %b %H:%M" if span > 86_400 else "%H:%M")


def render(chart: Chart, *, width: int = 560, height: int = 190) -> str:
    """The chart as an ``<svg>`` element (a string of markup, every label escaped)."""
    left, right, top, bottom = 56, 12, 26, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [t for s in chart.series for t, v in s.points if _finite(v)]
    ys: list[float] = [v for s in chart.series for _, v in s.points if v is not None and _finite(v)]
    ys += [r.value for r in chart.rules if math.isfinite(r.value)]
    title = escape(chart.title + (f" ({chart.unit})" if chart.unit else ""))
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-family="system-ui, sans-serif" font-size="11">'
        f"<title>{title}</title>"
        f'<text x="{left}" y="15" font-size="12" font-weight="600" fill="#111">{title}</text>'
    )
    if not xs:
        return (
            head + f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" '
            f'fill="#6b7280">no data yet</text></svg>'
        )
    x0 = chart.start if chart.start is not None else min(xs)
    x1 = chart.end if chart.end is not None else max(xs)
    if x1 <= x0:
        x1 = x0 + 60.0
    ticks = nice_ticks(min(0.0, min(ys)), max(ys))
    y0, y1 = ticks[0], ticks[-1]
    if y1 <= y0:
        y1 = y0 + 1.0

    def px(t: float) -> float:
        return left + (t - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        return top + plot_h - (v - y0) / (y1 - y0) * plot_h

    parts = [head]
    for tick, label in zip(ticks, axis_labels(ticks, chart.axis), strict=True):
        y = py(tick)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#4b5563">'
            f"{escape(label)}</text>"
        )
    for i in range(3):
        t = x0 + (x1 - x0) * i / 2
        anchor = ("start", "middle", "end")[i]
        parts.append(
            f'<text x="{px(t):.1f}" y="{top + plot_h + 14}" text-anchor="{anchor}" '
            f'fill="#4b5563">{_time_label(t, x1 - x0)}</text>'
        )
    for rule in chart.rules:
        if not math.isfinite(rule.value):
            continue
        y = py(rule.value)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{rule.color}" stroke-dasharray="6 3"/>'
            f'<text x="{left + plot_w - 2}" y="{y - 3:.1f}" text-anchor="end" '
            f'fill="{rule.color}">{escape(rule.label)}</text>'
        )
    for marker in chart.markers:
        if not (math.isfinite(marker.at) and x0 <= marker.at <= x1):
            continue
        x = px(marker.at)
        anchor = "end" if x > left + plot_w / 2 else "start"
        shift = -3 if anchor == "end" else 3
        parts.append(
            f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" '
            f'stroke="{marker.color}" stroke-dasharray="2 2"><title>{escape(marker.label)}'
            f'</title></line><text x="{x + shift:.1f}" y="{top + 9}" text-anchor="{anchor}" '
            f'fill="{marker.color}">{escape(marker.label)}</text>'
        )
    for series in chart.series:
        path, pen_down, singles = [], False, []
        for t, v in series.points:
            if not _finite(v):
                pen_down = False
                continue
            assert v is not None
            path.append(f"{'L' if pen_down else 'M'}{px(t):.1f},{py(v):.1f}")
            pen_down = True
            singles.append((px(t), py(v)))
        dash = ' stroke-dasharray="4 3"' if series.dashed else ""
        if path:
            parts.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{series.color}" '
                f'stroke-width="1.6"{dash}><title>{escape(series.label)}</title></path>'
            )
        if len(singles) == 1:  # a lone point draws no line: mark it
            x, y = singles[0]
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{series.color}"/>')
    legend_x = left
    for series in chart.series:
        label = escape(series.label)
        parts.append(
            f'<rect x="{legend_x}" y="{height - 12}" width="10" height="3" fill="{series.color}"/>'
            f'<text x="{legend_x + 14}" y="{height - 8}" fill="#111">{label}</text>'
        )
        legend_x += 24 + 6 * len(series.label)
    parts.append("</svg>")
    return "".join(parts)
