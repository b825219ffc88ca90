"""How figures read on the page and in the Markdown report (pure)."""

from __future__ import annotations

import math
from datetime import timedelta


def value(v: float | None, unit: str) -> str:
    """A figure with its unit: "1.23 %", "812 ms", "$0.00421", "0.82"; "-" when unknown."""
    if v is None or not math.isfinite(v):
        return "-"
    if unit == "%":
        return f"{v * 100:.2f} %"
    if unit == "ms":
        return f"{v:,.0f} ms"
    if unit == "$":
        return f"${v:.5f}" if abs(v) < 1 else f"${v:,.2f}"
    return f"{v:.3f}"


def interval(lower: float | None, upper: float | None, unit: str) -> str:
    """ "[a, b]" with either side "unbounded" when it is not known yet."""
    if lower is None and upper is None:
        return ""
    lo = value(lower, unit) if lower is not None and math.isfinite(lower) else "unbounded"
    hi = value(upper, unit) if upper is not None and math.isfinite(upper) else "unbounded"
    return f"[{lo}, {hi}]"


def duration(d: timedelta) -> str:
    """ "3 d 4 h", "2 h 5 min", "4 min 10 s"."""
    seconds = max(0, int(d.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def money(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "unknown (no priced requests in the last hour)"
    return f"${v:,.2f}"
