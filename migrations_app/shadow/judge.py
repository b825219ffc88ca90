"""Comparing the two answers of a shadow pair: the SDK's comparison scores, and the plan's judge
model's verdict when it has one (within the judge's own daily budget).

The verdict becomes the pair's value of the ``judge_preference`` guardrail (s = +1 the judge
preferred the candidate, 0 a tie, -1 control; ``comparison["paired"]``, which the pipeline
rolls up per unit as a paired metric with control's side 0), and counts for the judge's
calibration (``verdicts.judge_counts``: wins, ties, losses, unreadable answers, position and
length).
A verdict that could not be read, or was never asked for, has no value: it counts in neither
direction.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from turnout import compare, judges

from migrations_app.models import (
    ShadowSample,
)
from migrations_app.routing.snapshots import arm_spec
from migrations_app.shadow.answer_checks import pair_checks
from migrations_app.shadow.calls import with_provider
from migrations_app.shadow.judge_budget import budget_verdict
from migrations_app.shadow.pipeline import CandidateResult, NotCalled
from migrations_app.shadow.verdicts import PREFERENCE


def judge_pair(sample: ShadowSample, result: CandidateResult) -> dict[str, Any] | None:
    """The plan's judge model's verdict on the pair, when the plan has one and both answered.
    The answers' order is drawn from the sample id: a retried sample shows the same order."""
    model = sample.plan.judge_model
    if model is None or sample.control.get("error") or result.error:
        return None
    if getattr(sample, "judge_reserved", 0.0) is None:  # the claim found no room for it
        budget = sample.plan.judge_budget_usd_per_day
        return budget_verdict(float(budget) if budget is not None else None)
    control_text = sample.control.get("text", "")
    try:
        verdict = with_provider(
            model,
            arm_spec(model, {}, "none", ""),
            lambda provider: judges.judge(
                provider,
                sample.request["messages"],
                control_text,
                result.text,
                sample.pk,
                timeout=settings.TURNOUT_SHADOW_CALL_TIMEOUT,
            ),
        )
    except NotCalled as exc:  # the pair still counts; only the judge's opinion is missing
        return {"winner": "invalid", "score": None, "error": "not_called", "reason": exc.reason}
    return verdict.to_dict()


def compare_answers(sample: ShadowSample, result: CandidateResult) -> dict[str, Any]:
    """The comparison scores of control's and the candidate's answers, and the judge's
    verdict (``judge``, its score as ``judge_score``) when the plan has a judge."""
    scores = compare.compare(
        sample.control.get("text", ""),
        result.text,
        json_expected=sample.request.get("json_schema") is not None,
    ).to_dict()
    verdict = judge_pair(sample, result)
    if verdict is not None:
        scores["judge"] = verdict
        scores["judge_score"] = verdict["score"]
        if verdict["score"] is not None:
            scores["paired"] = {PREFERENCE: [0.0, float(verdict["score"])]}
    # The answer checks of both answers, paired (issue 15): beside the judge's preference.
    checks = pair_checks(sample, result)
    if checks:
        scores["checks"] = {"control": checks["control"], "candidate": checks["candidate"]}
        scores.setdefault("paired", {}).update(checks["paired"])
    return scores
