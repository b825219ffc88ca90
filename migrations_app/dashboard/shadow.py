"""The dashboard's shadow section: a run's paired comparison so far, and its latest pairs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from migrations_app.models import (
    MigrationPlan,
    PlanStage,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.shadow.pipeline import SCORE_KEYS

SHADOW_PAIRS = 5


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """One request both models answered (redacted at storage), with its comparison scores."""

    at: datetime | None
    prompt: str
    control: str
    candidate: str
    candidate_error: str
    scores: Sequence[tuple[str, str]]


def _score(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


#: The per-pair scores shown beside a pair (the sample keeps the rest: lengths, both arms'
#: refusal flags, the judge's raw answer).
PAIR_SCORES = frozenset(SCORE_KEYS) - {"judge_score"}  # the judge shows as its verdict


def _scores(comparison: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The pair's scores a person reads: the scalar ones, the judge's verdict in words, and
    the JSON diff's counts (the diff itself is in the sample)."""
    out = []
    for key, value in sorted(comparison.items()):
        if key == "judge" and isinstance(value, Mapping):
            reason = str(value.get("reason") or value.get("error") or "")
            out.append(("judge", f"{value.get('winner')}: {reason}".strip(": ")))
        elif key == "json_diff" and isinstance(value, Mapping):
            counts = [f"{len(value.get(k) or [])} {k}" for k in ("added", "removed", "changed")]
            out.append(("json diff", ", ".join(counts)))
        elif key in PAIR_SCORES and value is not None:
            out.append((key, _score(value)))
    return out


#: The shadow aggregate's means, in the order and words the dashboard shows them.
SHADOW_MEANS = (
    ("exact_match", "answers identical", "percent"),
    ("normalized_match", "identical after normalising case, spacing, punctuation", "percent"),
    ("json_valid", "valid JSON, where JSON was asked for", "percent"),
    ("similarity", "text similarity (word-overlap F1, mean)", "ratio"),
    ("length_ratio", "length, candidate / control (mean)", "ratio"),
    ("refusal", "candidate refused where control answered", "percent"),
    ("judge_score", "judge preference, candidate minus control (-1 to +1, mean)", "signed"),
)


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    """A run's shadow comparison so far: the paired failures and each score's mean."""

    pairs: int
    control_only: int
    candidate_only: int
    both: int
    means: Sequence[tuple[str, str, int]]  # label, value in words, pairs it is over


def shadow_summary(stages: Mapping[int, PlanStage]) -> ShadowSummary | None:
    """The run's shadow stages' paired aggregates, summed. One query."""
    ids = [pk for pk, stage in stages.items() if stage.kind == "shadow"]
    if not ids:
        return None
    total: dict[str, float] = {}
    for data in ShadowAggregate.objects.filter(stage_id__in=ids).values_list("data", flat=True):
        for key, value in data.items():
            if isinstance(value, int | float):  # the counts; "metrics" holds paired sums
                total[key] = total.get(key, 0) + value
    if not total.get("n"):
        return None
    means = []
    for key, label, kind in SHADOW_MEANS:
        n = int(total.get(f"{key}_n", 0))
        if n:
            mean = total[f"{key}_sum"] / n
            text = {"percent": f"{mean:.1%}", "ratio": f"{mean:.2f}", "signed": f"{mean:+.2f}"}
            means.append((label, text[kind], n))
    return ShadowSummary(
        pairs=int(total["n"]),
        control_only=int(total.get("control_only", 0)),
        candidate_only=int(total.get("candidate_only", 0)),
        both=int(total.get("both", 0)),
        means=means,
    )


def shadow_pairs(plan: MigrationPlan, limit: int = SHADOW_PAIRS) -> list[ShadowPair]:
    """The current run's latest compared shadow pairs, newest first. One query."""
    if plan.current_run_id is None:
        return []
    rows = (
        ShadowSample.objects.filter(plan=plan, run_id=plan.current_run_id, status=ShadowStatus.DONE)
        .order_by("-completed_at")
        .only("request", "control", "candidate", "comparison", "completed_at")[:limit]
    )
    pairs = []
    for sample in rows:
        messages = sample.request.get("messages", []) if isinstance(sample.request, dict) else []
        prompt = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        pairs.append(
            ShadowPair(
                at=sample.completed_at,
                prompt=str(prompt),
                control=str(sample.control.get("text", "")),
                candidate=str(sample.candidate.get("text", "")),
                candidate_error=str(sample.candidate.get("error") or ""),
                scores=_scores(sample.comparison),
            )
        )
    return pairs
