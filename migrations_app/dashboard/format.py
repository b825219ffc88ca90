"""How figures read on the page and in the Markdown report (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
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


# Axis labels: plain numbers, never an exponent (a chart read "1e+03" requests and "$5e-05"
# per request). Ticks come from svg.nice_ticks, 1, 2 or 5 times a power of ten apart, so the
# step's own decimals are enough for every label to differ.
# (from, divide by, letter): the largest tick decides, so one axis uses one suffix.
_SUFFIXES = ((1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k"))


def _decimals(values: Sequence[float], step: float) -> int:
    """The fewest decimals that write every value exactly (to a millionth of the step):
    0.005 steps -> 3, 0.2 -> 1, 20 -> 0; at most 12."""
    for decimals in range(13):
        if all(abs(round(v, decimals) - v) <= step * 1e-6 for v in values):
            return decimals
    return 12


def _signed(text: str, negative: bool, prefix: str, suffix: str) -> str:
    return f"{'-' if negative else ''}{prefix}{text}{suffix}"


def axis_labels(ticks: Sequence[float], unit: str = "") -> list[str]:
    """The labels of a chart's y ticks: ``unit`` "%" draws fractions as percentages, "$"
    dollars; "ms" and "" plain numbers. Large values shorten to k / M / B (by the largest
    tick, so one axis uses one suffix); zero is "0" whatever the decimals."""
    if not ticks:
        return []
    scale = 100.0 if unit == "%" else 1.0
    values = [t * scale for t in ticks]
    steps = [abs(b - a) for a, b in zip(values, values[1:], strict=False) if b != a]
    step = min(steps) if steps else abs(values[0]) or 1.0
    largest = max(abs(v) for v in values)
    divisor, letter = next(
        ((d, s) for low, d, s in _SUFFIXES if unit != "$" and largest >= low), (1.0, "")
    )
    decimals = _decimals([v / divisor for v in values], step / divisor)
    prefix = "$" if unit == "$" else ""
    suffix = "%" if unit == "%" else letter
    labels = []
    for v in values:
        if abs(v) < step * 1e-6:  # zero (and -0.0, and float noise around it)
            labels.append(f"{prefix}0{'%' if unit == '%' else ''}")
            continue
        text = f"{abs(v) / divisor:,.{decimals}f}"
        labels.append(_signed(text, v < 0, prefix, suffix))
    return labels


def plain(v: float, significant: int = 3) -> str:
    """One figure to about ``significant`` digits, without an exponent or trailing zeros:
    1000 -> "1,000", 0.00005 -> "0.00005", 1.5 -> "1.5"."""
    if not math.isfinite(v):
        return "-"
    if v == 0:
        return "0"
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(v))))
    text = f"{v:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def usd(v: float | None) -> str:
    """Dollars as a person reads a bill: "$12,345", "$12.34", "$0.0042"; "-" when unknown."""
    if v is None or not math.isfinite(v):
        return "-"
    if abs(v) >= 100:
        return f"${v:,.0f}"
    if abs(v) >= 1 or v == 0:
        return f"${v:,.2f}"
    return f"${plain(v, 2)}"
