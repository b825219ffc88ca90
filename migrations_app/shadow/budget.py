"""The shadow budget: a plan may cap its candidate's shadow spend per UTC day.

Claims are serialised per plan (the plan's row lock, ``claims``) and reserve each call's
estimated cost here, so concurrent workers cannot overshoot the cap by more than one
request's cost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db.models import Q, Sum
from turnout import estimate_tokens

from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.plans import lifecycle
from migrations_app.plans.catalog import cost_usd


def estimate_cost(model: Any, sample: ShadowSample) -> float:
    """The candidate call's cost before it is made, for the budget's reservation: control's
    token counts, or the SDK's estimate (``turnout.estimate_tokens``) of the prompt and of
    control's answer when the application did not report them (no reservation would let every
    sample through)."""
    control = sample.control
    input_tokens = control.get("input_tokens") or estimate_tokens(
        sample.request.get("messages", [])
    )
    output_tokens = control.get("output_tokens") or max(
        1, estimate_tokens([{"role": "assistant", "content": control.get("text", "")}])
    )
    return cost_usd(model, input_tokens, output_tokens) or 0.0


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def spent_today(plan: MigrationPlan, now: datetime) -> float:
    """The plan's shadow cost since UTC midnight: done calls at their real cost, running ones
    at their reservation."""
    total = ShadowSample.objects.filter(
        Q(status=ShadowStatus.DONE, completed_at__gte=_day_start(now))
        | Q(status=ShadowStatus.RUNNING),
        plan=plan,
    ).aggregate(s=Sum("candidate_cost_usd"))["s"]
    return float(total or 0.0)


def note_budget_reached(plan: MigrationPlan, budget: float, spent: float, now: datetime) -> None:
    if not AuditEvent.objects.filter(
        plan=plan, action="shadow_budget_reached", created_at__gte=_day_start(now)
    ).exists():
        lifecycle.record_edit(
            plan,
            actor=lifecycle.ENGINE,
            action="shadow_budget_reached",
            reason=f"Shadowing stopped until 00:00 UTC: ${spent:.2f} of the ${budget:.2f} "
            "daily shadow budget is spent.",
            evidence={"budget_usd": budget, "spent_usd": round(spent, 6)},
            publish=False,
        )
