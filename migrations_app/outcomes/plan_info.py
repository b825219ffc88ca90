"""A plan as ingest needs it: which run and stage each plan version routed in, and the arms'
prices. Outcomes and shadow samples are attributed through it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
)
from migrations_app.plans.catalog import cost_usd


@dataclass(frozen=True, slots=True)
class PlanInfo:
    """A plan as ingest needs it: which run and stage each plan version routed in, and the
    arms' prices."""

    plan: MigrationPlan
    versions: tuple[tuple[int, int | None, int | None, int | None], ...]
    # (version, run id, run number, stage id), ascending; the latest event per version wins
    prices: Mapping[str, Prices]  # arm -> $ per million input, output tokens
    # arm -> its model's token limits, as ingest checks each event's counts against them
    limits: Mapping[str, TokenLimits]
    # stage id -> the population it compares ("" the general split, else a cohort)
    stage_cohorts: Mapping[int, str] = field(default_factory=dict)

    def at(self, version: int) -> tuple[int | None, int | None, int | None]:
        found: tuple[int | None, int | None, int | None] = (None, None, None)
        for v, run_id, run_number, stage_id in self.versions:
            if v > version:
                break
            found = (run_id, run_number, stage_id)
        return found

    def cost(self, arm: str, input_tokens: int | None, output_tokens: int | None) -> float | None:
        return cost_usd(self.prices[arm], input_tokens, output_tokens)


class TokenLimits(NamedTuple):
    """An arm's model's limits on an outcome's token counts, and how an error names them."""

    context_window: int
    context_window_what: str
    max_output: int
    max_output_what: str

    @classmethod
    def of(cls, model: Any) -> TokenLimits:
        return cls(
            model.context_window,
            f"{model.model_id}'s context window",
            model.max_output_tokens,
            f"{model.model_id}'s maximum output",
        )


class Prices(NamedTuple):
    """An arm's prices as read once per plan (floats), in the catalog's names: what
    ``cost_usd`` reads, made once per plan rather than once per event."""

    input_price_per_mtok: float
    output_price_per_mtok: float


def plan_infos(keys: Iterable[str]) -> dict[str, PlanInfo]:
    """:class:`PlanInfo` for each existing plan key (two queries whatever the number)."""
    plans = {
        p.key: p
        for p in MigrationPlan.objects.filter(key__in=set(keys)).select_related(
            "control_model", "candidate_model__provider"
        )
    }
    rows: dict[int, list[tuple[int, int | None, int | None, int | None]]] = defaultdict(list)
    cohorts: dict[int, dict[int, str]] = defaultdict(dict)
    for v, run_id, run_number, stage_id, cohort, plan_id in (
        AuditEvent.objects.filter(plan__in=plans.values())
        .order_by("plan_version", "pk")
        .values_list(
            "plan_version", "run_id", "run__number", "stage_id", "stage__cohort", "plan_id"
        )
    ):
        rows[plan_id].append((v, run_id, run_number, stage_id))
        if stage_id is not None:
            cohorts[plan_id][stage_id] = cohort or ""
    return {
        key: PlanInfo(
            plan,
            tuple(rows[plan.pk]),
            {
                "control": Prices(
                    float(plan.control_model.input_price_per_mtok),
                    float(plan.control_model.output_price_per_mtok),
                ),
                "candidate": Prices(
                    float(plan.candidate_model.input_price_per_mtok),
                    float(plan.candidate_model.output_price_per_mtok),
                ),
            },
            {
                "control": TokenLimits.of(plan.control_model),
                "candidate": TokenLimits.of(plan.candidate_model),
            },
            cohorts[plan.pk],
        )
        for key, plan in plans.items()
    }
