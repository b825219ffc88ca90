"""Anytime-valid statistics for automatic rollback (see reference/statistics.md), one module
per test: inputs (the sums), verdicts, sequences (the shared confidence sequence and
unit-level variance), error_rate, quantiles, means, sample_ratio, paired, per_request (every
per-request metric: an application's own, an answer check, the judge's preference and score),
and evaluate (one entry point per built-in guardrail metric).

Pure: numpy and scipy over plain aggregates. No Django, no I/O, no clock. Every test
here may be evaluated after every window for days without inflating its false-alarm
rate: the bounds are confidence sequences, so the chance that they *ever* exclude the
truth is at most alpha.

The inputs are sums. The caller stores one :class:`ArmAggregates` per (plan, stage, arm,
window) and adds them up; addition is exact for integers and exactly rounded for floats
(:meth:`ArmAggregates.merge` uses ``math.fsum``), so the same windows give the same
decision in any order.

Bounds are one-sided toward harm for the rollback decision (the lower bound of
candidate/control for "more is worse") and one-sided the other way for "safe to advance".

Users, not requests, are the independent units: every test on per-unit sums takes its
variance and degrees of freedom from :func:`ratio_cluster_variance` (delete-one-unit
jackknife, Student's t on Kish's effective number of units) and its multiplier from
:func:`critical_value`; the quantile tests widen by :func:`design_effect`.
"""

from __future__ import annotations

from migrations_app.guardrails.stats.error_rate import (
    CONFIRMATORY_SHARE,
    MIN_ERRORS,
    confirmatory_look_due,
    confirmatory_share,
    error_arm,
    error_rate_confirmatory,
    error_rate_enough,
    error_rate_kernel,
    error_rate_test,
    error_rate_tests,
    fieller_bounds,
    rate_difference_bounds,
    rate_ratio_bounds,
)
from migrations_app.guardrails.stats.evaluate import (
    QUANTILES,
    evaluate_metric,
    evaluate_metrics,
)
from migrations_app.guardrails.stats.inputs import (
    CLUSTER_MOMENTS,
    MAPPING,
    RELATIVE_ACCURACY,
    ArmAggregates,
    Buckets,
    ClusterSums,
    FloatArray,
    MetricSums,
    PairedErrors,
    PairedSums,
    RatioArm,
    bucket_bounds,
    bucket_keys,
    bucket_value,
    bucketize,
    buckets_from_ddsketch,
    unit_moments,
)
from migrations_app.guardrails.stats.means import (
    MIN_COST_PER_ARM,
    MIN_FEEDBACK_PER_ARM,
    MeanSums,
    cost_test,
    cost_tests,
    feedback_rate_interval,
    mean_kernel,
    satisfaction_test,
)
from migrations_app.guardrails.stats.paired import (
    paired_error_test,
)
from migrations_app.guardrails.stats.per_request import (
    MIN_METRIC_SAMPLES,
    MetricKind,
    difference_kernel,
    metric_confirmatory,
    metric_kernel,
    metric_test,
    paired_difference_kernel,
    paired_fieller_bounds,
    paired_kernel,
    paired_metric_test,
    rate_ratio_kernel,
)
from migrations_app.guardrails.stats.quantiles import (
    QUANTILE_PRIOR_CONCENTRATION,
    design_effect,
    effective_quantile_ranks,
    indicator_correlation,
    latency_spread,
    minimum_samples_for_quantile,
    order_statistic_buckets,
    quantile_bounds_from_cumulative,
    quantile_interval,
    quantile_ranks,
    quantile_test,
)
from migrations_app.guardrails.stats.sample_ratio import (
    SRM_GRACE_SECONDS,
    SRM_PRIOR_CONCENTRATION,
    SampleRatio,
    sample_ratio_test,
    srm_log_e_value,
)
from migrations_app.guardrails.stats.sequences import (
    DEFAULT_N_STAR,
    critical_value,
    mixture_e_value,
    mixture_half_width,
    ratio_cluster_variance,
    welch_df,
)
from migrations_app.guardrails.stats.verdicts import (
    METRICS,
    Harm,
    Status,
    ToleranceKind,
    Verdict,
    classify,
    summarise,
    summarise_bounds,
    threshold,
)

__all__ = [
    "ArmAggregates",
    "Buckets",
    "CLUSTER_MOMENTS",
    "CONFIRMATORY_SHARE",
    "ClusterSums",
    "DEFAULT_N_STAR",
    "FloatArray",
    "Harm",
    "MAPPING",
    "METRICS",
    "MIN_COST_PER_ARM",
    "MIN_ERRORS",
    "MIN_FEEDBACK_PER_ARM",
    "MIN_METRIC_SAMPLES",
    "MetricKind",
    "MetricSums",
    "PairedSums",
    "MeanSums",
    "PairedErrors",
    "QUANTILES",
    "QUANTILE_PRIOR_CONCENTRATION",
    "RELATIVE_ACCURACY",
    "RatioArm",
    "SRM_GRACE_SECONDS",
    "SRM_PRIOR_CONCENTRATION",
    "SampleRatio",
    "Status",
    "ToleranceKind",
    "Verdict",
    "bucket_bounds",
    "bucket_keys",
    "bucket_value",
    "bucketize",
    "buckets_from_ddsketch",
    "classify",
    "confirmatory_look_due",
    "confirmatory_share",
    "error_arm",
    "cost_test",
    "cost_tests",
    "critical_value",
    "design_effect",
    "effective_quantile_ranks",
    "error_rate_confirmatory",
    "error_rate_enough",
    "error_rate_kernel",
    "error_rate_test",
    "error_rate_tests",
    "evaluate_metric",
    "evaluate_metrics",
    "feedback_rate_interval",
    "fieller_bounds",
    "rate_difference_bounds",
    "rate_ratio_bounds",
    "indicator_correlation",
    "latency_spread",
    "mean_kernel",
    "difference_kernel",
    "metric_confirmatory",
    "metric_kernel",
    "metric_test",
    "minimum_samples_for_quantile",
    "mixture_e_value",
    "mixture_half_width",
    "order_statistic_buckets",
    "paired_error_test",
    "paired_difference_kernel",
    "paired_fieller_bounds",
    "paired_kernel",
    "rate_ratio_kernel",
    "paired_metric_test",
    "quantile_bounds_from_cumulative",
    "quantile_interval",
    "quantile_ranks",
    "quantile_test",
    "ratio_cluster_variance",
    "sample_ratio_test",
    "satisfaction_test",
    "srm_log_e_value",
    "summarise",
    "summarise_bounds",
    "threshold",
    "unit_moments",
    "welch_df",
]
