"""Shadow mode: both models answered the same requests, so the error test is paired."""

from __future__ import annotations

import math

from migrations_app.guardrails.stats.error_rate import MIN_ERRORS
from migrations_app.guardrails.stats.inputs import PairedErrors
from migrations_app.guardrails.stats.sequences import (
    DEFAULT_N_STAR,
    mixture_half_width,
)
from migrations_app.guardrails.stats.verdicts import (
    ToleranceKind,
    Verdict,
    _not_enough,
    _verdict,
)


def paired_error_test(
    pairs: PairedErrors,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind = "relative",
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
    min_discordant: int = MIN_ERRORS,
) -> Verdict:
    """Shadow mode: both models answered the same requests (McNemar-style).

    Only discordant pairs carry information about the difference; the paired variance of
    the log risk ratio, (b + c) / ((a + d)(b + d)) for discordant b, c and concordant errors
    d, is much smaller than two independent arms' when errors are request-driven.
    """
    metric = "error_rate"
    n = pairs.n
    b, c, d = pairs.control_only, pairs.candidate_only, pairs.both
    e_a, e_b = b + d, c + d
    if b + c < min_discordant:
        return _not_enough(
            metric,
            tolerance,
            tolerance_kind,
            "increase",
            n,
            n,
            alpha,
            f"{b + c} requests where exactly one model failed; the test needs {min_discordant}",
        )
    if tolerance_kind == "relative":
        pa, pb = (e_a + 0.5) / (n + 0.5), (e_b + 0.5) / (n + 0.5)
        est = math.log(pb / pa)
        var = (b + c + 1.0) / ((e_a + 0.5) * (e_b + 0.5))
        width = float(mixture_half_width(math.sqrt(var), 2 * n, alpha, n_star))
        lo, hi = math.exp(est - width), math.exp(est + width)
        est = math.exp(est)
    else:
        est = (c - b) / n
        var = ((b + c) / n - est * est) / n
        width = float(mixture_half_width(math.sqrt(max(var, 0.0)), 2 * n, alpha, n_star))
        lo, hi = est - width, est + width
    return _verdict(metric, est, lo, hi, tolerance, tolerance_kind, "increase", n, n, alpha)
