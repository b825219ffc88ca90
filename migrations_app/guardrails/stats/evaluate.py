"""One entry point per guardrail metric: the test that metric's guardrail runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from migrations_app.guardrails.stats.error_rate import error_rate_tests
from migrations_app.guardrails.stats.inputs import ArmAggregates, RatioArm
from migrations_app.guardrails.stats.means import cost_tests, satisfaction_test
from migrations_app.guardrails.stats.quantiles import (
    design_effect,
    effective_quantile_ranks,
    latency_spread,
    quantile_test,
)
from migrations_app.guardrails.stats.sequences import DEFAULT_N_STAR
from migrations_app.guardrails.stats.verdicts import METRICS, ToleranceKind, Verdict

QUANTILES = {"latency_p95": 0.95, "latency_p99": 0.99, "ttft_p95": 0.95}


def evaluate_metric(
    metric: str,
    control: ArmAggregates,
    candidate: ArmAggregates,
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
) -> Verdict:
    """Run the test for a guardrail metric (one of :data:`METRICS`)."""
    (verdict,) = evaluate_metrics(
        metric, [(control, candidate)], tolerance=tolerance, tolerance_kind=tolerance_kind,
        alpha=alpha, n_star=n_star,
    )  # fmt: skip
    return verdict


def evaluate_metrics(
    metric: str,
    pairs: Sequence[tuple[ArmAggregates, ArmAggregates]],
    *,
    tolerance: float,
    tolerance_kind: ToleranceKind,
    alpha: float,
    n_star: float = DEFAULT_N_STAR,
) -> list[Verdict]:
    """:func:`evaluate_metric` for many (control, candidate) pairs at one alpha: a plan's
    segments. The unit-level variances and critical values, most of an evaluation's time,
    are computed in one vectorised pass over every pair (bench/bench_segments.py); each
    pair's verdict is the one it would get alone."""
    if metric == "error_rate":
        return error_rate_tests(
            pairs, tolerance=tolerance, tolerance_kind=tolerance_kind, alpha=alpha, n_star=n_star
        )
    if metric in QUANTILES:
        source: Literal["latency", "ttft"] = "ttft" if metric.startswith("ttft") else "latency"
        q = QUANTILES[metric]
        effects = [
            design_effect(
                RatioArm.stack([latency_spread(pair[arm], source) for pair in pairs]),
                q,
                alpha / 2.0,
                n_star,
            )
            for arm in (0, 1)
        ]
        # Every arm's ranks in one vectorised search (cached), before the per-pair tests
        # below read them one arm at a time (quantile_test's own alpha / 2 per arm).
        effective_quantile_ranks(
            [getattr(pair[arm], source).total for arm in (0, 1) for pair in pairs],
            q,
            alpha / 2.0,
            np.maximum(np.concatenate(effects), 1.0),
        )
        return [
            quantile_test(
                metric,
                getattr(control, source),
                getattr(candidate, source),
                quantile=q,
                tolerance=tolerance,
                tolerance_kind=tolerance_kind,
                alpha=alpha,
                design_effects=(float(effects[0][i]), float(effects[1][i])),
            )
            for i, (control, candidate) in enumerate(pairs)
        ]
    if metric == "satisfaction":
        return [
            satisfaction_test(
                control,
                candidate,
                tolerance=tolerance,
                tolerance_kind=tolerance_kind,
                alpha=alpha,
                n_star=n_star,
            )
            for control, candidate in pairs
        ]
    if metric == "cost_per_request":
        return cost_tests(
            pairs, tolerance=tolerance, tolerance_kind=tolerance_kind, alpha=alpha, n_star=n_star
        )
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
