"""Filters for templates/turnout/report.md: every value a person or the engine wrote goes
through ``md`` (text) or ``md_code`` (a code span), so the report renders it as written."""

from __future__ import annotations

from django import template

from migrations_app.dashboard.report import md_code, md_text

register = template.Library()
register.filter("md", md_text, is_safe=True)
register.filter("md_code", md_code, is_safe=True)
