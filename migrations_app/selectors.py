"""Reads. Views, the engine and the dashboard ask here; nothing in this module writes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from migrations_app import aggregation
from migrations_app.alerts.message import ExamplePair
from migrations_app.models import (
    AuditEvent,
    Evaluation,
    MigrationPlan,
    PlanPhase,
    PlanStage,
    PlanStatus,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
    StageAggregate,
    WindowAggregate,
)
from migrations_app.phases import PhaseRule, Position, position
from migrations_app.stats import ArmAggregates, PairedErrors


def phase_rules_of(phases: Iterable[PlanPhase]) -> list[PhaseRule]:
    """Phase rows as the pure rules of ``phases.py`` see them."""
    return [
        PhaseRule(kind=p.kind, percent=p.percent, steps=tuple(float(s) for s in (p.steps or [])))
        for p in phases
    ]


def phase_rules(plan: MigrationPlan) -> list[PhaseRule]:
    """The plan's phases as the pure rules of ``phases.py`` see them."""
    return phase_rules_of(plan.phases.all())


def plan_position(plan: MigrationPlan) -> Position:
    """Where the plan's traffic goes now. Only a running plan splits; other statuses serve one arm."""
    here = position(phase_rules(plan), plan.phase_index, plan.step_index)
    if plan.status == PlanStatus.RUNNING:
        return here
    return Position(here.phase, here.phase_index, here.step_index, 0, 0)


def stage_totals(stage: PlanStage | int) -> dict[str, ArmAggregates]:
    """Each arm's aggregates over a whole stage (two rows, whatever the stage's length)."""
    rows = StageAggregate.objects.filter(stage=stage).values_list("arm", "data")
    totals = {"control": ArmAggregates(), "candidate": ArmAggregates()}
    totals.update({arm: aggregation.from_json(data) for arm, data in rows})
    return totals


def paired_errors(stage: PlanStage | int) -> PairedErrors | None:
    """A shadow stage's paired error counts (both models answered the same requests)."""
    data = ShadowAggregate.objects.filter(stage=stage).values_list("data", flat=True).first()
    if not data:
        return None
    return PairedErrors(
        n=data.get("n", 0),
        control_only=data.get("control_only", 0),
        candidate_only=data.get("candidate_only", 0),
        both=data.get("both", 0),
    )


def example_pairs(plan: MigrationPlan, limit: int = 3) -> list[ExamplePair]:
    """The current run's latest shadow pairs, failures and disagreements first: what a page
    shows so on-call can read the difference, not only count it."""
    if plan.current_run_id is None:
        return []
    recent = ShadowSample.objects.filter(
        plan=plan, run_id=plan.current_run_id, status=ShadowStatus.DONE
    ).order_by("-completed_at")[:50]

    def rank(sample: ShadowSample) -> tuple[bool, bool]:
        return (
            not sample.candidate.get("error"),
            bool(sample.comparison.get("normalized_match", False)),
        )

    pairs = []
    for sample in sorted(recent, key=rank)[:limit]:
        prompt = next(
            (m["content"] for m in reversed(sample.request["messages"]) if m["role"] == "user"),
            "",
        )
        error = sample.candidate.get("error")
        pairs.append(
            ExamplePair(
                prompt=prompt,
                control=sample.control.get("text", ""),
                candidate=f"(no answer: {error})" if error else sample.candidate.get("text", ""),
            )
        )
    return pairs


def latest_evaluation(stage: PlanStage | int) -> Evaluation | None:
    """The stage's most recent evaluation (its bounds are the running intersection)."""
    return Evaluation.objects.filter(stage=stage).order_by("-created_at", "-pk").first()


def window_totals(stage: PlanStage | int, arm: str, *, since: datetime) -> ArmAggregates:
    """One arm's aggregates over a stage's windows from ``since`` on."""
    return ArmAggregates.merge(
        aggregation.from_json(data)
        for data in WindowAggregate.objects.filter(
            stage=stage, arm=arm, window__gte=since
        ).values_list("data", flat=True)
    )


# --- ingest ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanInfo:
    """A plan as ingest needs it: which run and stage each plan version routed in, and the
    arms' prices."""

    plan: MigrationPlan
    versions: tuple[tuple[int, int | None, int | None, int | None], ...]
    # (version, run id, run number, stage id), ascending; the latest event per version wins
    prices: Mapping[str, tuple[float, float]]  # arm -> $ per million input, output tokens

    def at(self, version: int) -> tuple[int | None, int | None, int | None]:
        found: tuple[int | None, int | None, int | None] = (None, None, None)
        for v, run_id, run_number, stage_id in self.versions:
            if v > version:
                break
            found = (run_id, run_number, stage_id)
        return found

    def cost(self, arm: str, input_tokens: int | None, output_tokens: int | None) -> float | None:
        if input_tokens is None or output_tokens is None:
            return None
        per_in, per_out = self.prices[arm]
        return (input_tokens * per_in + output_tokens * per_out) / 1e6


def plan_infos(keys: Iterable[str]) -> dict[str, PlanInfo]:
    """:class:`PlanInfo` for each existing plan key (two queries whatever the number)."""
    plans = {
        p.key: p
        for p in MigrationPlan.objects.filter(key__in=set(keys)).select_related(
            "control_model", "candidate_model"
        )
    }
    rows: dict[int, list[tuple[int, int | None, int | None, int | None]]] = defaultdict(list)
    for v, run_id, run_number, stage_id, plan_id in (
        AuditEvent.objects.filter(plan__in=plans.values())
        .order_by("plan_version", "pk")
        .values_list("plan_version", "run_id", "run__number", "stage_id", "plan_id")
    ):
        rows[plan_id].append((v, run_id, run_number, stage_id))
    return {
        key: PlanInfo(
            plan,
            tuple(rows[plan.pk]),
            {
                "control": (
                    float(plan.control_model.input_price_per_mtok),
                    float(plan.control_model.output_price_per_mtok),
                ),
                "candidate": (
                    float(plan.candidate_model.input_price_per_mtok),
                    float(plan.candidate_model.output_price_per_mtok),
                ),
            },
        )
        for key, plan in plans.items()
    }
