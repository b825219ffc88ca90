"""People label shadow pairs blind, for the judge's calibration: the dashboard's labelling page
and the labelling API (``/api/v1/plans/<key>/label-pairs``, ``.../labels``) both go through here.

Blind: a pair is shown as the conversation and two answers, A and B, with no model named; which
one is the candidate's is drawn per pair and per person with a keyed hash (HMAC with the
server's secret), so the same person sees the same order again, the order cannot be worked out
from the ids, and nothing about it has to be kept between showing a pair and labelling it. A
label says which *shown* answer is better; the service maps it back to the arms and stores the
order with it.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from migrations_app.errors import ValidationFailed
from migrations_app.judge import calibration
from migrations_app.models import (
    JudgeLabel,
    LabelChoice,
    MigrationPlan,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.outcomes.event_checks import unstorable_char

#: What a person may answer about a blind pair: A better, a tie, B better, or skip it.
CHOICES = ("a", "tie", "b", "skip")
#: Pairs one request may ask for.
MAX_PAIRS = 50
#: Labels one request may carry.
MAX_LABELS = 200
#: Random pairs are drawn from the run's latest this many judged pairs (a bounded read).
DRAW_FROM = 5000


@dataclass(frozen=True, slots=True)
class BlindPair:
    """One shadow pair as a labeller sees it: the conversation and two answers, no names."""

    pair: str
    messages: Sequence[dict[str, str]]
    answer_a: str
    answer_b: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "messages": list(self.messages),
            "answer_a": self.answer_a,
            "answer_b": self.answer_b,
        }

    @property
    def prompt(self) -> str:
        """The last user message (what the page shows largest)."""
        return next(
            (m.get("content", "") for m in reversed(self.messages) if m.get("role") == "user"), ""
        )


def candidate_position(sample_id: str, labeller: str) -> str:
    """Where the candidate's answer is shown to ``labeller`` for this pair: "A" or "B"."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"label:{sample_id}:{labeller}".encode(), hashlib.sha256
    ).digest()
    return "A" if digest[0] & 1 else "B"


def _judged(plan: MigrationPlan) -> Any:
    """The current run's done pairs whose judge verdict can be compared with a label."""
    return ShadowSample.objects.filter(
        plan=plan,
        run_id=plan.current_run_id,
        status=ShadowStatus.DONE,
        comparison__judge__winner__in=list(calibration.CLASSES),
    )


def _blind(sample: ShadowSample, labeller: str) -> BlindPair:
    control = str(sample.control.get("text", ""))
    candidate = str(sample.candidate.get("text", ""))
    first, second = (
        (candidate, control)
        if candidate_position(sample.pk, labeller) == "A"
        else (control, candidate)
    )
    messages = [
        {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
        for m in sample.request.get("messages", [])
        if m.get("role") != "system"
    ]
    return BlindPair(pair=sample.pk, messages=messages, answer_a=first, answer_b=second)


def label_pairs(
    *, plan: MigrationPlan, labeller: str, count: int = 1, seed: int | None = None
) -> list[BlindPair]:
    """Up to ``count`` random judged pairs of the plan's current run that ``labeller`` has
    not labelled yet, blind. Two queries."""
    if not 1 <= count <= MAX_PAIRS:
        raise ValidationFailed(
            f"count is a whole number from 1 to {MAX_PAIRS}.",
            details={"field": "count", "fields": {"count": [f"From 1 to {MAX_PAIRS}."]}},
        )
    if plan.current_run_id is None:
        return []
    done = set(
        JudgeLabel.objects.filter(plan=plan, labeller=labeller).values_list("sample_id", flat=True)
    )
    ids = [
        pk
        for pk in _judged(plan).order_by("-completed_at").values_list("pk", flat=True)[:DRAW_FROM]
        if pk not in done
    ]
    chosen = random.Random(seed).sample(ids, min(count, len(ids)))
    rows = {
        s.pk: s
        for s in ShadowSample.objects.filter(pk__in=chosen).only("request", "control", "candidate")
    }
    return [_blind(rows[pk], labeller) for pk in chosen if pk in rows]


@dataclass(frozen=True, slots=True)
class LabelIn:
    pair: str
    choice: str


def label_record(
    *, plan: MigrationPlan, labeller: str, labels: Sequence[LabelIn], user: Any = None
) -> int:
    """Store labels on blind pairs (a person's answer about the shown A and B, mapped back to
    the arms), one per labeller and pair: labelling a pair again replaces the earlier label.
    All or nothing: one label naming a pair that is not one of the run's judged pairs, or an
    unknown choice, refuses the batch with the index at fault. Returns how many were stored."""
    if not 1 <= len(labels) <= MAX_LABELS:
        raise ValidationFailed(
            f"labels holds 1 to {MAX_LABELS} labels.",
            details={"field": "labels", "fields": {"labels": [f"1 to {MAX_LABELS} labels."]}},
        )
    problems: dict[str, list[str]] = {}
    for i, label in enumerate(labels):
        if label.choice not in CHOICES:
            problems[f"labels[{i}].choice"] = [f"One of {', '.join(CHOICES)}."]
    # A sample id is text PostgreSQL stores: one with a NUL or a lone surrogate cannot be one
    # (and would fail the query, a 500).
    asked = [lab.pair for lab in labels if unstorable_char(lab.pair) is None]
    known = set(_judged(plan).filter(pk__in=asked).values_list("pk", flat=True))
    for i, label in enumerate(labels):
        if label.pair not in known:
            problems.setdefault(f"labels[{i}].pair", []).append(
                "Not one of this plan's judged pairs on its current run."
            )
    if problems:
        raise ValidationFailed(
            "Some labels cannot be stored; nothing was.",
            details={"field": next(iter(problems)), "fields": problems},
        )
    now = timezone.now()
    with transaction.atomic():
        for label in labels:
            position = candidate_position(label.pair, labeller)
            JudgeLabel.objects.update_or_create(
                sample_id=label.pair,
                labeller=labeller,
                defaults={
                    "plan": plan,
                    "run_id": plan.current_run_id,
                    "user": user,
                    "choice": arm_choice(label.choice, position),
                    "candidate_position": position,
                    "created_at": now,
                },
            )
    return len(labels)


def arm_choice(choice: str, position: str) -> str:
    """A choice about the shown answers in the arms' terms."""
    if choice in ("tie", "skip"):
        return LabelChoice.TIE if choice == "tie" else LabelChoice.SKIP
    shown = "A" if choice == "a" else "B"
    return LabelChoice.CANDIDATE if shown == position else LabelChoice.CONTROL


def labelled_count(plan: MigrationPlan, labeller: str | None = None) -> int:
    """Labels (skips included) on the current run, by one labeller or everyone."""
    labels = JudgeLabel.objects.filter(plan=plan, run_id=plan.current_run_id)
    if labeller is not None:
        labels = labels.filter(labeller=labeller)
    return labels.count()
