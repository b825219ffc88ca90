"""Shadow reads: a shadow stage's paired error counts and paired metrics, and the latest pairs a
page shows."""

from __future__ import annotations

from migrations_app.alerts.message import ExamplePair
from migrations_app.guardrails.stats import PairedErrors, PairedSums
from migrations_app.models import (
    MigrationPlan,
    PlanStage,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)


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


def paired_metrics(stage: PlanStage | int) -> dict[str, PairedSums]:
    """A shadow stage's paired per-request metrics (the judge's preference, the answer
    checks), by name: both answers' sums and their difference's, with unit-level sums."""
    data = ShadowAggregate.objects.filter(stage=stage).values_list("data", flat=True).first()
    stored = (data or {}).get("metrics") or {}
    return {name: PairedSums.from_dict(value) for name, value in stored.items()}


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
