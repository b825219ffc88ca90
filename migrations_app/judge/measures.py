"""The judge's two guardrails as per-request metrics (``rules.Measure``): what they are tested
on, where, and how they read. Pure.

- ``judge_preference``, in shadow: per pair s = +1 (the judge preferred the candidate), 0 (a
  tie), -1 (control); the pairs' sums go to the engine as the stage's paired sums under this
  name (control's side all zeros, so the difference is s), and the guardrail tests the mean
  of s against an absolute tolerance: 0.05 is "the candidate may lose at most five points
  net" (reference/quality.md, "Paired preference").
- ``judge_score``, in a split or rollout: a pointwise judge scores a sample of each arm's
  answers on the plan's rubric (1-5); the guardrail tests the difference of the arms' means.

A pair or answer whose judge answer could not be read counts in neither (no value at all).
"""

from __future__ import annotations

from collections.abc import Mapping

from migrations_app.guardrails.rules import Measure

PREFERENCE = "judge_preference"
SCORE = "judge_score"

#: s in [-1, 1]: a difference of two values in [0, 1] would span the same range.
PREFERENCE_MEASURE = Measure(
    kind="mean",
    harm="decrease",
    label="net judge preference",
    value_range=1.0,
    in_split=False,
    in_shadow=True,
)
SCORE_MEASURE = Measure(
    kind="mean",
    harm="decrease",
    label="judge score (1-5)",
    value_range=4.0,
    in_split=True,
    in_shadow=False,
)
JUDGE_MEASURES: Mapping[str, Measure] = {PREFERENCE: PREFERENCE_MEASURE, SCORE: SCORE_MEASURE}
#: Rubric scores a pointwise judge gives.
SCORE_RANGE = (1, 5)
