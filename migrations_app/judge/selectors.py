"""Reads for the judge: its calibration against people on a run, its spend today, and what its
guardrails become for the engine (a Measure, and only an alert while the plan's floor does not
trust it)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from migrations_app.guardrails.rules import GuardrailSpec
from migrations_app.judge import calibration
from migrations_app.judge.measures import JUDGE_MEASURES
from migrations_app.models import (
    JudgeLabel,
    JudgeSpend,
    LabelChoice,
    MigrationPlan,
    PlanRun,
    ShadowAggregate,
)
from migrations_app.shadow.judge_budget import day_of

#: The shadow aggregate's judge counts the calibration reads (shadow.verdicts.judge_counts).
_BIAS_COUNTS = ("decisive", "first", "length_decisive", "longer")


def labelled_pairs(run: PlanRun | int) -> tuple[list[str], list[str]]:
    """(the judge's verdicts, people's) on a run's labelled pairs: skips, and pairs whose
    verdict could not be read or was never asked for, count nowhere. One query."""
    judge: list[str] = []
    human: list[str] = []
    rows = (
        JudgeLabel.objects.filter(run=run)
        .exclude(choice=LabelChoice.SKIP)
        .values_list("choice", "sample__comparison")
    )
    for choice, comparison in rows:
        verdict = (comparison or {}).get("judge") or {}
        winner = verdict.get("winner") if isinstance(verdict, dict) else None
        if winner in calibration.CLASSES:
            judge.append(winner)
            human.append(choice)
    return judge, human


def judge_counts(run: PlanRun | int) -> dict[str, int]:
    """The run's shadow stages' judge counts, summed (``judge_<name>`` in their aggregates)."""
    totals: dict[str, int] = {}
    for data in ShadowAggregate.objects.filter(stage__run=run).values_list("data", flat=True):
        for key, value in (data or {}).items():
            if key.startswith("judge_") and key != "judge_score_sum" and isinstance(value, int):
                name = key.removeprefix("judge_")
                totals[name] = totals.get(name, 0) + value
    return totals


def floor_of(plan: MigrationPlan) -> calibration.Floor:
    return calibration.Floor(min_labels=plan.judge_min_labels, min_kappa=plan.judge_min_kappa)


def run_calibration(
    plan: MigrationPlan, run: PlanRun | int | None = None
) -> calibration.Calibration | None:
    """The judge against people on ``run`` (the plan's current one by default); None when the
    plan has no judge or no run. Labels count for the run they were given on: a new run,
    perhaps with another judge or rubric, earns its trust again."""
    run = run if run is not None else plan.current_run_id
    if plan.judge_model_id is None or run is None:
        return None
    judge, human = labelled_pairs(run)
    counts = judge_counts(run)
    return calibration.calibrate(
        judge,
        human,
        first_chosen=counts.get("first", 0),
        decisive=counts.get("decisive", 0),
        longer_chosen=counts.get("longer", 0),
        length_decisive=counts.get("length_decisive", 0),
        floor=floor_of(plan),
    )


def judge_spec(spec: GuardrailSpec, trust: calibration.Calibration | None) -> GuardrailSpec:
    """A plan's guardrail as the engine tests it: a judge guardrail gets its Measure, and
    may only alert while the judge is not trusted (the plan's floor, ``trust.why``) or the
    plan has no judge at all. Other guardrails are returned as they are."""
    measure = JUDGE_MEASURES.get(spec.metric)
    if measure is None:
        return spec
    if trust is None:
        why = "the plan has no judge model"
    else:
        why = "" if trust.trusted else trust.why
    return replace(spec, measure=measure, alert_only=why)


@dataclass(frozen=True, slots=True)
class Spend:
    """The judge's calls today, against its daily budget (None: no limit)."""

    calls: int
    cost_usd: float
    skipped: int
    budget_usd: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "cost_usd": round(self.cost_usd, 6),
            "skipped": self.skipped,
            "budget_usd": self.budget_usd,
        }


def spend_today(plan: MigrationPlan, now: datetime) -> Spend:
    row = JudgeSpend.objects.filter(plan=plan, day=day_of(now)).first()
    budget = plan.judge_budget_usd_per_day
    return Spend(
        calls=row.calls if row else 0,
        cost_usd=row.cost_usd if row else 0.0,
        skipped=row.skipped if row else 0,
        budget_usd=float(budget) if budget is not None else None,
    )
