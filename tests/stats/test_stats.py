"""Unit tests of migrations_app.stats: inputs, bucketing, verdicts, order independence, speed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ddsketch import DDSketch
from scipy import stats as sps

from migrations_app import stats as S
from tests.stats import sim

ALPHA = 0.0125
TOLERANCES = {
    "error_rate": (1.5, "relative"),
    "latency_p95": (1.3, "relative"),
    "latency_p99": (1.3, "relative"),
    "ttft_p95": (1.3, "relative"),
    "satisfaction": (0.1, "absolute"),
    "cost_per_request": (1.2, "relative"),
}


def evaluate_all(control: S.ArmAggregates, candidate: S.ArmAggregates) -> list[dict]:
    return [
        S.evaluate_metric(
            m, control, candidate, tolerance=t, tolerance_kind=k, alpha=ALPHA
        ).to_dict()
        for m, (t, k) in TOLERANCES.items()
    ]


def test_bucketing_matches_ddsketch():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.lognormal(6, 1.5, 5000), [0.0, 1e-9, 1.0, 1e6]])
    sketch = DDSketch(0.01)
    for v in values:
        sketch.add(float(v))
    assert S.buckets_from_ddsketch(sketch) == S.Buckets.from_values(values)
    keys = S.bucket_keys(values[values > 0.001])
    assert keys.tolist() == [sketch._mapping.key(float(v)) for v in values[values > 0.001]]
    lower, upper = S.bucket_bounds(keys)
    assert np.all((lower < values[values > 0.001]) & (values[values > 0.001] <= upper))
    key = int(keys[0])
    assert S.bucket_value(key) == pytest.approx(sketch._mapping.value(key))


def test_buckets_from_other_mappings_are_refused():
    with pytest.raises(ValueError):
        S.buckets_from_ddsketch(DDSketch(0.02))


def test_quantile_ranks_bracket_the_quantile_and_first_finite():
    for t in (200, 1000, 10_000, 1_000_000):
        j, k = S.quantile_ranks(t, 0.95, 0.00625)
        assert 0 < j < 0.95 * t < k <= t
    assert S.minimum_samples_for_quantile(0.95, ALPHA) == 141
    assert S.minimum_samples_for_quantile(0.99, ALPHA) == 563
    assert S.quantile_ranks(100, 0.95, 0.00625)[1] == 101


def test_quantile_bounds_contain_the_truth():
    rng = np.random.default_rng(2)
    values = rng.lognormal(np.log(800), 0.5, 4000)
    est, lo, hi = S.quantile_interval(S.Buckets.from_values(values), 0.95, 0.00625)
    true = 800 * math.exp(0.5 * 1.6449)
    assert lo < true < hi
    assert est == pytest.approx(np.quantile(values, 0.95), rel=0.03)


def test_cluster_variance_reduces_to_binomial_for_single_request_units():
    n, e = 1000.0, 30.0
    var = S.ratio_cluster_variance(e, n, n, e, e, n, 0.0)
    p = e / n
    assert float(var) == pytest.approx(p * (1 - p) / n * n / (n - 1))


def test_heavy_user_widens_the_error_bounds():
    light = S.ArmAggregates(
        requests=10_000, errors=200, error_clusters=S.ClusterSums(10_000, 200, 200, 10_000)
    )
    # Same counts, but 150 of the errors come from one user with 1,000 requests.
    heavy = S.ArmAggregates(
        requests=10_000,
        errors=200,
        error_clusters=S.ClusterSums(9_001, 150**2 + 50, 150 * 1000 + 50, 1000**2 + 9_000),
    )
    a = S.error_rate_test(light, light, tolerance=1.5, alpha=ALPHA)
    b = S.error_rate_test(light, heavy, tolerance=1.5, alpha=ALPHA)
    assert b.upper - b.lower > 2 * (a.upper - a.lower)


def test_verdicts_and_summaries():
    rng = np.random.default_rng(3)
    control = sim.random_arm(rng, 20_000)
    worse = sim.random_arm(
        rng, 20_000, error_rate=0.06, latency_factor=2.0, cost_factor=2.0, satisfaction=0.3
    )
    for verdict in evaluate_all(control, worse):
        assert verdict["status"] == "regressed", verdict
    v = S.evaluate_metric(
        "latency_p95", control, worse, tolerance=1.3, tolerance_kind="relative", alpha=ALPHA
    )
    assert v.summary.startswith("candidate p95 latency is 2.")
    assert "at least" in v.summary and "tolerance 1.30x: regressed" in v.summary
    same = sim.random_arm(rng, 20_000)
    statuses = {v["metric"]: v["status"] for v in evaluate_all(control, same)}
    assert statuses["latency_p95"] == "inside_tolerance"
    assert statuses["error_rate"] in ("inside_tolerance", "inconclusive")
    v = S.evaluate_metric(
        "satisfaction", control, same, tolerance=0.1, tolerance_kind="absolute", alpha=ALPHA
    )
    assert v.harm == "decrease" and "tolerance -0.100" in v.summary


def test_not_enough_data_is_json_safe():
    empty = S.ArmAggregates()
    for verdict in evaluate_all(empty, empty):
        assert verdict["status"] == "not_enough_data"
        json.dumps(verdict, allow_nan=False)
    assert "not enough data" in S.error_rate_test(empty, empty, tolerance=1.5, alpha=ALPHA).summary


def test_identical_aggregates_identical_decisions_in_any_order():
    rng = np.random.default_rng(4)
    windows_a = [sim.random_arm(rng, int(n), units=50) for n in rng.integers(50, 400, 40)]
    windows_b = [
        sim.random_arm(rng, int(n), units=50, error_rate=0.03, latency_factor=1.2)
        for n in rng.integers(50, 400, 40)
    ]
    a0, b0 = S.ArmAggregates.merge(windows_a), S.ArmAggregates.merge(windows_b)
    expected = evaluate_all(a0, b0)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(40)
        a = S.ArmAggregates.merge(windows_a[i] for i in order)
        b = S.ArmAggregates.merge(windows_b[i] for i in reversed(order))
        assert a == a0 and b == b0
        assert evaluate_all(a, b) == expected
    pairwise = windows_a[0]
    for w in windows_a[1:]:
        pairwise = pairwise + w
    assert pairwise.requests == a0.requests and pairwise.latency == a0.latency


def test_sample_ratio():
    assert not S.sample_ratio_test(9_000, 1_000, expected_share=0.1).mismatch
    result = S.sample_ratio_test(9_000, 1_200, expected_share=0.1)
    assert result.mismatch and "mismatch" in result.summary
    json.dumps(result.to_dict(), allow_nan=False)


def test_paired_tests():
    v = S.paired_error_test(
        S.PairedErrors(n=2000, control_only=5, candidate_only=60, both=20),
        tolerance=1.5,
        alpha=ALPHA,
    )
    assert v.status == "regressed"
    v = S.paired_error_test(
        S.PairedErrors(n=2000, control_only=10, candidate_only=11, both=20),
        tolerance=1.5,
        alpha=ALPHA,
    )
    assert v.status in ("inside_tolerance", "inconclusive")
    rng = np.random.default_rng(5)
    d = rng.normal(0.4, 0.3, 500)
    v = S.paired_difference_test(
        "latency_p95",
        S.PairedDiffs(n=500, sum=float(d.sum()), sum_sq=float((d * d).sum())),
        tolerance=1.3,
        harm="increase",
        log_scale=True,
        alpha=ALPHA,
    )
    assert v.status == "regressed" and v.estimate == pytest.approx(math.exp(d.mean()))


def test_one_evaluation_over_a_million_requests_per_arm_is_deterministic():
    rng = np.random.default_rng(6)

    def big(factor: float) -> S.ArmAggregates:
        n = 1_000_000
        lat = rng.lognormal(np.log(800), 0.7, n) * factor
        return S.ArmAggregates(
            requests=n,
            errors=20_000,
            error_clusters=S.ClusterSums(50_000, 5e5, 1e7, 1e9),
            latency=S.Buckets.from_values(lat),
            ttft=S.Buckets.from_values(lat / 4),
            cost_n=n,
            cost_sum=2e3,
            cost_sum_sq=10.0,
            cost_clusters=S.ClusterSums(50_000, 2e3, 5e4, 1e9),
            feedback_n=50_000,
            feedback_sum=35_000.0,
            feedback_sum_sq=35_000.0,
            feedback_clusters=S.ClusterSums(30_000, 1e5, 1e5, 2e5),
            feedback_rate_clusters=S.ClusterSums(50_000, 1e5, 1e6, 1e9),
        )

    a, b = big(1.0), big(1.1)
    # Its speed is measured by bench/bench_stats.py (the suite holds no wall-clock limits);
    # here: every metric gives a JSON-safe verdict at this size, the same one every time.
    first = evaluate_all(a, b)
    S.quantile_ranks.cache_clear()
    assert evaluate_all(a, b) == first
    assert len(first) == len(TOLERANCES) and all(v["status"] for v in first)


def test_fieller_bounds_are_the_roots_of_the_contrast():
    """Lower: p_b - L p_a = c sd(L); upper: U p_a - p_b = c sd(U); sd(t)^2 = v_b + t^2 v_a."""
    rng = np.random.default_rng(5)
    p_a, p_b = rng.uniform(0.005, 0.05, 200), rng.uniform(0.005, 0.1, 200)
    v_a = (p_a * rng.uniform(0.05, 0.8, 200)) ** 2
    v_b = (p_b * rng.uniform(0.05, 0.8, 200)) ** 2
    c = rng.uniform(1.5, 4.0, 200)
    lo, hi = S.fieller_bounds(p_a, p_b, v_a, v_b, c)

    def sd(t):
        return np.sqrt(v_b + t * t * v_a)

    has_lo, has_hi = lo > 0, np.isfinite(hi)
    assert has_lo.any() and (~has_lo).any() and has_hi.any() and (~has_hi).any()
    np.testing.assert_allclose((p_b - lo * p_a)[has_lo], (c * sd(lo))[has_lo], rtol=1e-9)
    np.testing.assert_allclose((hi * p_a - p_b)[has_hi], (c * sd(hi))[has_hi], rtol=1e-9)
    # No positive lower bound exactly when the contrast at 0 is not clear of 0; no upper
    # bound when the control rate itself is not.
    assert np.array_equal(~has_lo, p_b <= c * np.sqrt(v_b))
    assert np.array_equal(~has_hi, p_a <= c * np.sqrt(v_a))
    assert np.all(lo <= p_b / p_a) and np.all(p_b / p_a <= hi)


def test_count_e_process_is_an_e_value_under_the_null_and_conditions_per_window():
    # Exactly a martingale at the tolerance: given a window's M errors, the candidate's
    # count is Binomial(M, 1.5 w / (1 + 1.5 w)) and the e-value's mean over it is 1.
    m, n_a, n_b = 40, 1000.0, 700.0
    x = np.arange(m + 1)
    p0 = 1.5 * (n_b / n_a) / (1 + 1.5 * (n_b / n_a))
    # One window per row (windows run along the last axis).
    log_e = S.count_e_process_log((m - x)[:, None], n_a, x[:, None], n_b, theta0=1.5)[:, 0]
    assert float(np.sum(sps.binom.pmf(x, m, p0) * np.exp(log_e))) == pytest.approx(1.0)
    # And below it a supermartingale (theta0 is least favourable for "ratio <= theta0").
    p_low = 1.2 * (n_b / n_a) / (1 + 1.2 * (n_b / n_a))
    assert float(np.sum(sps.binom.pmf(x, m, p_low) * np.exp(log_e))) < 1.0
    rng = np.random.default_rng(6)
    # Ville: Poisson errors at the tolerance, the weight changing every window.
    windows, paths = 60, 20_000
    n_a = rng.integers(100, 2000, windows).astype(float)
    n_b = rng.integers(20, 2000, windows).astype(float)
    e_a = rng.poisson(0.02 * n_a, (paths, windows))
    e_b = rng.poisson(0.02 * 1.5 * n_b, (paths, windows))
    crossed = (S.count_e_process_log(e_a, n_a, e_b, n_b, theta0=1.5) >= math.log(20)).any(axis=1)
    assert sim.rate_ok(int(crossed.sum()), paths, 0.05)
    worse = S.count_e_process_log(e_a[:50], n_a, rng.poisson(0.06 * n_b, (50, windows)), n_b,
                                  theta0=1.5)  # fmt: skip
    assert (worse[:, -1] > math.log(1 / ALPHA)).all()
    # One window with constant weight is the same as its pieces (the likelihood factorises).
    pieces = S.count_e_process_log([3, 4, 5], [100, 200, 300], [6, 9, 14], [50, 100, 150],
                                   theta0=1.5)  # fmt: skip
    whole = S.count_e_process_log([12], [600], [29], [300], theta0=1.5)
    assert pieces[-1] == pytest.approx(whole[-1], rel=1e-12)
    # A window without candidate traffic says nothing.
    empty = S.count_e_process_log([3, 7], [100, 100], [6, 0], [50, 0], theta0=1.5)
    assert empty[1] == empty[0]
