"""Per-request metrics in the admin: the catalog's (every plan may guard them) and each plan's
own (an inline on the plan's page). The answer checks are built in and need no row."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from migrations_app.models import GuardrailMetric, MetricDefinition
from migrations_app.plans.edits import EDITABLE_STATUSES
from migrations_app.plans.metric_specs import CHECK_SPECS
from migrations_app.plans.metrics import plan_metric_specs


@admin.register(MetricDefinition)
class MetricDefinitionAdmin(admin.ModelAdmin):
    """Catalog metrics are the rows without a plan."""

    list_display = ("name", "plan", "kind", "direction", "lower_bound", "upper_bound")
    list_filter = ("kind", ("plan", admin.EmptyFieldListFilter))
    search_fields = ("name", "description", "plan__key")
    fields = ("plan", "name", "kind", "direction", "lower_bound", "upper_bound", "description")


class MetricDefinitionInline(admin.TabularInline):
    """A plan's own metrics. Save the plan with a new one before adding its guardrail."""

    model = MetricDefinition
    fields = ("name", "kind", "direction", "lower_bound", "upper_bound", "description")
    extra = 0
    verbose_name = "metric the application reports"
    verbose_name_plural = (
        "Metrics the application reports (client.metric / report(metrics=...)); the answer "
        "checks and the catalog's metrics need no row here"
    )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and (
            obj is None or obj.status in EDITABLE_STATUSES
        )

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission

    def get_queryset(self, request: HttpRequest) -> QuerySet[MetricDefinition]:
        return super().get_queryset(request).order_by("name")


# The blank choice first: a new row left alone is sent blank, unchanged, and ignored (with a
# metric preselected the browser would send it, and Django would check an empty row).
_FIXED: list[tuple[str, Any]] = [
    ("", "---------"),
    ("Built-in", list(GuardrailMetric.choices)),
    ("Answer checks", [(name, spec.label) for name, spec in CHECK_SPECS.items()]),
]


def metric_choices(plan_id: int | None) -> list[tuple[str, Any]]:
    """What a guardrail may watch, grouped: the built-in six, the answer checks, and the
    metrics the catalog and the plan declare (read when a form is made, never at import)."""
    declared = [
        (name, f"{name} ({spec.source})")
        for name, spec in sorted(plan_metric_specs(plan_id).items())
        if spec.source != "check"
    ]
    return [*_FIXED, ("Declared metrics", declared)] if declared else list(_FIXED)


class GuardrailMetricField(forms.ChoiceField):
    """A guardrail's metric, chosen from what the plan may watch (``metric_choices``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("max_length", None)
        kwargs.pop("empty_value", None)
        super().__init__(*args, choices=_FIXED, **kwargs)
