"""Filters for the dashboard's pages: figures as people read them (``dashboard.format``)."""

from __future__ import annotations

import math
from typing import Any

from django import template

from migrations_app.dashboard import format as fmt
from migrations_app.plans.preview import duration_text

register = template.Library()


@register.filter
def usd(value: Any) -> str:
    return fmt.usd(None if value is None else float(value))


@register.filter
def minutes(value: Any) -> str:
    """A number of minutes as "1 h 30 min"."""
    return "-" if value is None else duration_text(float(value))


@register.filter
def percent(value: Any) -> str:
    """A fraction as "12 %", "+40 %" with ``signed``."""
    return "-" if value is None else f"{float(value) * 100:,.3g} %"


@register.filter
def change(value: Any) -> str:
    """A relative change as "+40 %" / "-12 %"."""
    if value is None:
        return "-"
    if not math.isfinite(float(value)):
        return "from nothing"
    v = float(value) * 100
    return "no change" if abs(v) < 0.05 else f"{v:+,.3g} %"


@register.filter
def number(value: Any) -> str:
    return "-" if value is None else fmt.plain(float(value))
