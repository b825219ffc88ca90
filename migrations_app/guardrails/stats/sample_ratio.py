"""Sample ratio: does each arm get the share of traffic the split says (an e-value)?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

from migrations_app.guardrails.stats.inputs import FloatArray
from migrations_app.guardrails.stats.verdicts import _json_float

# Prior concentration of the sample-ratio e-value's Beta mixture around the expected share.
SRM_PRIOR_CONCENTRATION = 100.0

# A stage's first seconds are not judged. Units are counted when their outcomes arrive, and
# right after a split starts the arm whose first calls are slow (a cold client: an import and
# a connection, seconds under load) reports late: 54 control units and 0 candidate 9 s into a
# 50 % step is a delay, not a broken split. The e-value is valid at every look, so skipping
# the early ones costs no validity (only the time to catch a real mismatch); after the grace a
# real mismatch, a candidate that never reports included, is judged as before.
SRM_GRACE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Sequential sample-ratio check: does the candidate's share match the weight?"""

    control: int
    candidate: int
    expected_share: float
    observed_share: float
    e_value: float
    alpha: float
    mismatch: bool
    summary: str
    # Seconds of the stage's grace left when this was computed (0: judged).
    grace_left: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the audit trail."""
        return {
            "control": self.control,
            "candidate": self.candidate,
            "expected_share": _json_float(self.expected_share),
            "observed_share": _json_float(self.observed_share),
            "e_value": _json_float(self.e_value),
            "alpha": _json_float(self.alpha),
            "mismatch": self.mismatch,
            "summary": self.summary,
            "grace_left": _json_float(self.grace_left),
        }


def srm_log_e_value(
    control: npt.ArrayLike, candidate: npt.ArrayLike, expected_share: float
) -> FloatArray:
    """log e-value of the Beta-binomial mixture against candidate share == expected.

    Conjugate mixture martingale (Lindon & Malek 2011.03567, multinomial case with two
    cells): valid at every look, two-sided, no minimum sample.
    """
    x = np.asarray(candidate, dtype=np.float64)
    n = x + np.asarray(control, dtype=np.float64)
    w = float(expected_share)
    a, b = w * SRM_PRIOR_CONCENTRATION, (1 - w) * SRM_PRIOR_CONCENTRATION
    return np.asarray(
        special.betaln(a + x, b + n - x)
        - special.betaln(a, b)
        - x * math.log(w)
        - (n - x) * math.log1p(-w),
        dtype=np.float64,
    )


def sample_ratio_test(
    control_units: int,
    candidate_units: int,
    *,
    expected_share: float,
    alpha: float = 0.001,
    elapsed_seconds: float = math.inf,
) -> SampleRatio:
    """Sample-ratio mismatch from unit counts (units are assigned independently by hash,
    so each is a Bernoulli(weight) draw; request counts are not, heavy users cluster).

    ``elapsed_seconds``: how long the stage has run; within ``SRM_GRACE_SECONDS`` the e-value
    is computed and shown but never a mismatch."""
    total = control_units + candidate_units
    observed = candidate_units / total if total else math.nan
    if not 0.0 < expected_share < 1.0 or total == 0:
        e_value = 1.0
    else:
        e_value = float(
            np.exp(
                min(700.0, float(srm_log_e_value(control_units, candidate_units, expected_share)))
            )
        )
    grace_left = max(0.0, SRM_GRACE_SECONDS - elapsed_seconds)
    mismatch = e_value >= 1.0 / alpha and grace_left == 0.0
    verdict = "mismatch" if mismatch else "consistent"
    if grace_left:
        verdict = (
            f"not judged in the stage's first {SRM_GRACE_SECONDS:.0f} s "
            "(outcomes of slow first calls arrive late)"
        )
    summary = (
        f"candidate has {observed:.2%} of {total} units, expected {expected_share:.2%}; "
        f"e-value {e_value:.3g} (mismatch at {1 / alpha:.0f}): " + verdict
        if total
        else "no units yet"
    )
    return SampleRatio(
        control=control_units,
        candidate=candidate_units,
        expected_share=expected_share,
        observed_share=observed,
        e_value=e_value,
        alpha=alpha,
        mismatch=mismatch,
        summary=summary,
        grace_left=grace_left,
    )
