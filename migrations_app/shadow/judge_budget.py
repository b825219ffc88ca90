"""The judge's own daily budget: a plan may cap what its judge's calls (pairwise in shadow,
pointwise in a split) cost per UTC day, apart from the candidate's shadow budget.

A claim reserves each judge call's estimated cost in the plan's ``JudgeSpend`` row for the day
(locked for the update, in the claim's transaction), so concurrent workers stop within about
one call's cost of the cap; the answer settles the reservation to the real cost from the
judge's token counts. Calls refused for the budget are counted (``skipped``) and their pairs
or answers get no verdict: counted in neither direction, as an unreadable one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from django.db.models import F
from turnout import estimate_tokens

from migrations_app.models import JudgeSpend, MigrationPlan, ModelSpec
from migrations_app.plans.catalog import cost_usd

#: What a verdict's JSON costs in output tokens, about (a winner or score and a sentence).
VERDICT_TOKENS = 60
#: The judge prompts' own text, in tokens, beyond the conversation and the answers.
PROMPT_TOKENS = 180


def day_of(now: datetime) -> date:
    return now.astimezone(UTC).date()


def estimate_judge_cost(
    model: ModelSpec, messages: Sequence[Mapping[str, Any]], answers: Sequence[str]
) -> float:
    """A judge call's cost before it is made: the conversation and the answers it is shown,
    the prompt's own text, and a verdict's worth of output, at the judge's prices."""
    shown = [*messages, *({"role": "assistant", "content": a} for a in answers)]
    return cost_usd(model, estimate_tokens(shown) + PROMPT_TOKENS, VERDICT_TOKENS) or 0.0


class JudgeAllowance:
    """One claim transaction's view of a plan's judge spend today: :meth:`reserve` says
    whether one more call fits the budget and books it (call :meth:`save` before the
    transaction ends)."""

    def __init__(self, plan: MigrationPlan, now: datetime) -> None:
        self.budget = (
            float(plan.judge_budget_usd_per_day)
            if plan.judge_budget_usd_per_day is not None
            else None
        )
        JudgeSpend.objects.get_or_create(plan=plan, day=day_of(now))
        # Serialises the judge reservations of one plan for the day (with the plan's claim
        # lock, the caller's): each sees every other worker's.
        self.row = JudgeSpend.objects.select_for_update().get(plan=plan, day=day_of(now))

    def reserve(self, estimate: float) -> bool:
        if self.budget is not None and self.row.cost_usd + estimate > self.budget:
            self.row.skipped += 1
            return False
        self.row.calls += 1
        self.row.cost_usd += estimate
        return True

    def save(self) -> None:
        self.row.save(update_fields=["calls", "cost_usd", "skipped"])


def settle(plan_id: int, day: date, delta: float) -> None:
    """Move a day's reservations to the calls' real cost (``delta`` = real - reserved, summed
    over the answers stored in this transaction)."""
    if delta:
        JudgeSpend.objects.filter(plan_id=plan_id, day=day).update(cost_usd=F("cost_usd") + delta)


def real_cost(model: ModelSpec | None, verdict: Mapping[str, Any] | None) -> float:
    """What a judge call cost by its token counts (0 when it was not made or reported none)."""
    if model is None or not verdict:
        return 0.0
    return cost_usd(model, verdict.get("input_tokens"), verdict.get("output_tokens")) or 0.0


BUDGET_SPENT = "budget"  # a verdict's error when the day's judge budget had no room for it


def budget_verdict(budget: float | None) -> dict[str, Any]:
    """The stored verdict of a pair the judge was not asked about for the budget."""
    return {
        "winner": "invalid",
        "score": None,
        "error": BUDGET_SPENT,
        "reason": f"the judge's daily budget of ${budget:.2f} was spent" if budget else "",
    }
