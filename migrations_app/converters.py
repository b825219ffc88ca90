"""URL converters: ``<plan_key:key>`` matches one path segment without a NUL or a lone
surrogate, so such a path is a 404 from the resolver instead of a query PostgreSQL refuses (a
500). Other keys no plan has still reach the views: a PUT to create a plan under a malformed key
is answered 400 naming ``key``, by the plan validation (the model's pattern)."""

from __future__ import annotations

from django.urls import register_converter

from migrations_app.plans.json_checks import UNSTORABLE_CHARS


class PlanKeyConverter:
    regex = f"[^/{UNSTORABLE_CHARS}]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(PlanKeyConverter, "plan_key")
