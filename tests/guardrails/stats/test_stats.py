"""Unit tests of migrations_app.stats: inputs, bucketing, verdicts, order independence, speed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ddsketch import DDSketch
from scipy import stats as sps

from migrations_app.guardrails import stats
from tests.guardrails.stats import sim

ALPHA = 0.0125
TOLERANCES = {
    "error_rate": (1.5, "relative"),
    "latency_p95": (1.3, "relative"),
    "latency_p99": (1.3, "relative"),
    "ttft_p95": (1.3, "relative"),
    "satisfaction": (0.1, "absolute"),
    "cost_per_request": (1.2, "relative"),
}


def evaluate_all(control: stats.ArmAggregates, candidate: stats.ArmAggregates) -> list[dict]:
    return [
        stats.evaluate_metric(
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
    assert stats.buckets_from_ddsketch(sketch) == stats.Buckets.from_values(values)
    keys = stats.bucket_keys(values[values > 0.001])
    assert keys.tolist() == [sketch._mapping.key(float(v)) for v in values[values > 0.001]]
    lower, upper = stats.bucket_bounds(keys)
    assert np.all((lower < values[values > 0.001]) & (values[values > 0.001] <= upper))
    key = int(keys[0])
    assert stats.bucket_value(key) == pytest.approx(sketch._mapping.value(key))


def test_buckets_from_other_mappings_are_refused():
    with pytest.raises(ValueError):
        stats.buckets_from_ddsketch(DDSketch(0.02))


def test_quantile_ranks_bracket_the_quantile_and_first_finite():
    for t in (200, 1000, 10_000, 1_000_000):
        j, k = stats.quantile_ranks(t, 0.95, 0.00625)
        assert 0 < j < 0.95 * t < k <= t
    assert stats.minimum_samples_for_quantile(0.95, ALPHA) == 141
    assert stats.minimum_samples_for_quantile(0.99, ALPHA) == 563
    assert stats.quantile_ranks(100, 0.95, 0.00625)[1] == 101


def test_quantile_bounds_contain_the_truth():
    rng = np.random.default_rng(2)
    values = rng.lognormal(np.log(800), 0.5, 4000)
    est, lo, hi = stats.quantile_interval(stats.Buckets.from_values(values), 0.95, 0.00625)
    true = 800 * math.exp(0.5 * 1.6449)
    assert lo < true < hi
    assert est == pytest.approx(np.quantile(values, 0.95), rel=0.03)


def test_cluster_variance_reduces_to_binomial_for_single_request_units():
    n, e = 1000.0, 30.0
    var, df = stats.ratio_cluster_variance(stats.RatioArm(e, n, e, n, e, e, n, e, e, n), 0.0)
    p = e / n
    # The jackknife of independent requests: each one's leverage is 1/n.
    assert float(var) == pytest.approx(p * (1 - p) / n / (1 - 1 / n) ** 2, rel=1e-3)
    assert float(df) == n - 1


def test_cluster_variance_is_at_least_the_delete_one_unit_jackknife():
    """A few users send most requests (Pareto activity), each with their own error rate: the
    variance from the stored sums is never below the exact jackknife over units, and within
    a few percent above it (the plain sandwich with G/(G-1) falls to 6 % of it when one user
    dominates, 86 % in the median); its degrees of freedom are Kish's effective number of
    units minus one."""
    rng = np.random.default_rng(8)
    ratios, sandwich = [], []
    for _ in range(50):
        n = np.floor(rng.pareto(1.1, 800) * 3).astype(float)
        n = n[n > 0]
        y = rng.binomial(n.astype(int), rng.beta(0.1, 4.9, n.size)).astype(float)
        total, m = n.sum(), y.sum() / n.sum()
        jackknife = float(np.sum(((y.sum() - y) / (total - n) - m) ** 2))
        arm = stats.RatioArm.of(y.sum(), total, stats.ClusterSums.from_units(y, n))
        var, df = stats.ratio_cluster_variance(arm, 0.0)
        ratios.append(float(var) / jackknife)
        sandwich.append(np.sum((y - m * n) ** 2) / total**2 * n.size / (n.size - 1) / jackknife)
        assert float(df) == pytest.approx(max(total**2 / np.sum(n * n) - 1, 1))
    assert 1.0 <= min(ratios) and max(ratios) <= 1.1
    assert min(sandwich) < 0.1 and np.median(sandwich) < 0.9


def test_heavy_user_widens_the_error_bounds():
    light = stats.ArmAggregates(
        requests=10_000, errors=200, error_clusters=stats.ClusterSums(10_000, 200, 200, 10_000)
    )
    # Same counts, but 150 of the errors come from one user with 1,000 requests.
    heavy = stats.ArmAggregates(
        requests=10_000,
        errors=200,
        error_clusters=stats.ClusterSums(9_001, 150**2 + 50, 150 * 1000 + 50, 1000**2 + 9_000),
    )
    a = stats.error_rate_test(light, light, tolerance=1.5, alpha=ALPHA)
    b = stats.error_rate_test(light, heavy, tolerance=1.5, alpha=ALPHA)
    assert b.upper - b.lower > 2 * (a.upper - a.lower)


def test_verdicts_and_summaries():
    rng = np.random.default_rng(3)
    control = sim.random_arm(rng, 20_000)
    worse = sim.random_arm(
        rng, 20_000, error_rate=0.06, latency_factor=2.0, cost_factor=2.0, satisfaction=0.3
    )
    for verdict in evaluate_all(control, worse):
        assert verdict["status"] == "regressed", verdict
    v = stats.evaluate_metric(
        "latency_p95", control, worse, tolerance=1.3, tolerance_kind="relative", alpha=ALPHA
    )
    assert v.summary.startswith("candidate p95 latency is 2.")
    assert "at least" in v.summary and "tolerance 1.30x: regressed" in v.summary
    same = sim.random_arm(rng, 20_000)
    statuses = {v["metric"]: v["status"] for v in evaluate_all(control, same)}
    assert statuses["latency_p95"] == "inside_tolerance"
    assert statuses["error_rate"] in ("inside_tolerance", "inconclusive")
    v = stats.evaluate_metric(
        "satisfaction", control, same, tolerance=0.1, tolerance_kind="absolute", alpha=ALPHA
    )
    assert v.harm == "decrease" and "tolerance -0.100" in v.summary


def test_not_enough_data_is_json_safe():
    empty = stats.ArmAggregates()
    for verdict in evaluate_all(empty, empty):
        assert verdict["status"] == "not_enough_data"
        json.dumps(verdict, allow_nan=False)
    assert (
        "not enough data" in stats.error_rate_test(empty, empty, tolerance=1.5, alpha=ALPHA).summary
    )


def test_identical_aggregates_identical_decisions_in_any_order():
    rng = np.random.default_rng(4)
    windows_a = [sim.random_arm(rng, int(n), units=50) for n in rng.integers(50, 400, 40)]
    windows_b = [
        sim.random_arm(rng, int(n), units=50, error_rate=0.03, latency_factor=1.2)
        for n in rng.integers(50, 400, 40)
    ]
    a0, b0 = stats.ArmAggregates.merge(windows_a), stats.ArmAggregates.merge(windows_b)
    expected = evaluate_all(a0, b0)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(40)
        a = stats.ArmAggregates.merge(windows_a[i] for i in order)
        b = stats.ArmAggregates.merge(windows_b[i] for i in reversed(order))
        assert a == a0 and b == b0
        assert evaluate_all(a, b) == expected
    pairwise = windows_a[0]
    for w in windows_a[1:]:
        pairwise = pairwise + w
    assert pairwise.requests == a0.requests and pairwise.latency == a0.latency


def test_sample_ratio():
    assert not stats.sample_ratio_test(9_000, 1_000, expected_share=0.1).mismatch
    result = stats.sample_ratio_test(9_000, 1_200, expected_share=0.1)
    assert result.mismatch and "mismatch" in result.summary
    json.dumps(result.to_dict(), allow_nan=False)


def test_paired_tests():
    v = stats.paired_error_test(
        stats.PairedErrors(n=2000, control_only=5, candidate_only=60, both=20),
        tolerance=1.5,
        alpha=ALPHA,
    )
    assert v.status == "regressed"
    v = stats.paired_error_test(
        stats.PairedErrors(n=2000, control_only=10, candidate_only=11, both=20),
        tolerance=1.5,
        alpha=ALPHA,
    )
    assert v.status in ("inside_tolerance", "inconclusive")
    rng = np.random.default_rng(5)
    d = rng.normal(0.4, 0.3, 500)
    v = sim.paired_difference_test(
        "latency_p95",
        sim.PairedDiffs(n=500, sum=float(d.sum()), sum_sq=float((d * d).sum())),
        tolerance=1.3,
        harm="increase",
        log_scale=True,
        alpha=ALPHA,
    )
    assert v.status == "regressed" and v.estimate == pytest.approx(math.exp(d.mean()))


def test_one_evaluation_over_a_million_requests_per_arm_is_deterministic():
    rng = np.random.default_rng(6)
    a, b = sim.million_request_arm(rng, 1.0), sim.million_request_arm(rng, 1.1)
    # Its speed is measured by bench/bench_stats.py (the suite holds no wall-clock limits);
    # here: every metric gives a JSON-safe verdict at this size, the same one every time.
    first = evaluate_all(a, b)
    stats.quantile_ranks.cache_clear()
    assert evaluate_all(a, b) == first
    assert len(first) == len(TOLERANCES) and all(v["status"] for v in first)


def test_fieller_bounds_are_the_roots_of_the_contrast():
    """Lower: p_b - L p_a = c sd(L); upper: U p_a - p_b = c sd(U); sd(t)^2 = v_b + t^2 v_a."""
    rng = np.random.default_rng(5)
    p_a, p_b = rng.uniform(0.005, 0.05, 200), rng.uniform(0.005, 0.1, 200)
    v_a = (p_a * rng.uniform(0.05, 0.8, 200)) ** 2
    v_b = (p_b * rng.uniform(0.05, 0.8, 200)) ** 2
    c = rng.uniform(1.5, 4.0, 200)
    lo, hi = stats.fieller_bounds(p_a, p_b, v_a, v_b, c)

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
    log_e = sim.count_e_process_log((m - x)[:, None], n_a, x[:, None], n_b, theta0=1.5)[:, 0]
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
    crossed = (sim.count_e_process_log(e_a, n_a, e_b, n_b, theta0=1.5) >= math.log(20)).any(axis=1)
    assert sim.rate_ok(int(crossed.sum()), paths, 0.05)
    worse = sim.count_e_process_log(e_a[:50], n_a, rng.poisson(0.06 * n_b, (50, windows)), n_b,
                                  theta0=1.5)  # fmt: skip
    assert (worse[:, -1] > math.log(1 / ALPHA)).all()
    # One window with constant weight is the same as its pieces (the likelihood factorises).
    pieces = sim.count_e_process_log([3, 4, 5], [100, 200, 300], [6, 9, 14], [50, 100, 150],
                                   theta0=1.5)  # fmt: skip
    whole = sim.count_e_process_log([12], [600], [29], [300], theta0=1.5)
    assert pieces[-1] == pytest.approx(whole[-1], rel=1e-12)
    # A window without candidate traffic says nothing.
    empty = sim.count_e_process_log([3, 7], [100, 100], [6, 0], [50, 0], theta0=1.5)
    assert empty[1] == empty[0]


def test_effective_quantile_ranks():
    """At design effect 1 they are the sequence's ranks; at D the ranks of t / D values
    scaled back, so the bounds sit further out in the same sample."""
    for t in (500, 4000, 100_000):
        j, k = stats.quantile_ranks(t, 0.95, 0.00625)
        jj, kk = stats.effective_quantile_ranks(t, 0.95, 0.00625, 1.0)
        assert (int(jj), int(kk)) == (j, k)
        j3, k3 = stats.effective_quantile_ranks(t, 0.95, 0.00625, 3.0)
        je, ke = stats.quantile_ranks(t // 3, 0.95, 0.00625)
        assert int(k3) == min(-(-ke * t // (t // 3)), t + 1) and int(k3) > k
        assert int(j3) == (je - 1) * t // (t // 3) + 1 and int(j3) < j
    # Not enough effective values for a bound: none, as with too few values.
    _, k = stats.effective_quantile_ranks(1000, 0.95, 0.00625, 10.0)
    assert int(k) == 1001


def latency_arm(rng: np.random.Generator, spread: float, n: int = 20_000) -> stats.ArmAggregates:
    """Pareto activity over 2,000 users; each user's latencies share a level (sd ``spread``
    in log ms) beside independent noise (sd 0.5)."""
    activity = rng.pareto(1.1, 2000) + 1.0
    unit = rng.choice(2000, n, p=activity / activity.sum())
    level = rng.normal(0.0, spread, 2000)[unit]
    latency = 800.0 * np.exp(level + 0.5 * rng.standard_normal(n))
    z = np.log1p(latency)
    return stats.ArmAggregates(
        requests=n,
        latency=stats.Buckets.from_values(latency),
        latency_log1p_n=n,
        latency_log1p_sum=float(z.sum()),
        latency_log1p_sum_sq=float((z * z).sum()),
        latency_clusters=sim.cluster_sums(unit, z),
    )


def test_design_effect_measures_how_latencies_cluster_by_user():
    rng = np.random.default_rng(9)
    half = ALPHA / 2
    independent = [latency_arm(rng, 0.0) for _ in range(20)]
    clustered = [latency_arm(rng, 0.3) for _ in range(20)]
    d_independent = [
        float(stats.design_effect(stats.latency_spread(a, "latency"), 0.95, half))
        for a in independent
    ]
    d_clustered = [
        float(stats.design_effect(stats.latency_spread(a, "latency"), 0.95, half))
        for a in clustered
    ]
    # Independent latencies: 1 or near it (the estimate's excess over 1, widened by t).
    assert 1.0 <= min(d_independent) and np.median(d_independent) < 1.1
    # A user's own level: the count below p95 varies many times more than a binomial one.
    assert np.median(d_clustered) > 5 * np.median(d_independent)
    # No latency sums recorded (a stage older than them): the sequence as it was.
    assert (
        float(stats.design_effect(stats.latency_spread(stats.ArmAggregates(), "ttft"), 0.95, half))
        == 1.0
    )
    a, b = clustered[0], clustered[1]
    v = stats.evaluate_metric(
        "latency_p95", a, b, tolerance=1.3, tolerance_kind="relative", alpha=ALPHA
    )
    plain = stats.quantile_test(
        "latency_p95", a.latency, b.latency, quantile=0.95, tolerance=1.3, alpha=ALPHA
    )
    assert v.lower < plain.lower and v.upper > plain.upper
    assert any("latencies cluster by user" in note for note in v.notes)


def test_indicator_correlation_of_a_bivariate_normal_pair():
    """Owen's T form against scipy's bivariate normal CDF; 0 and 1 at the ends, and far
    below rho in the tails."""
    z = sps.norm.ppf(0.95)
    for rho in (0.05, 0.26, 0.5, 0.9):
        joint = sps.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([z, z])
        expected = (joint - 0.95**2) / (0.95 * 0.05)
        assert float(stats.indicator_correlation(rho, 0.95)) == pytest.approx(expected, abs=1e-6)
    assert stats.indicator_correlation([0.0, 1.0], 0.99).tolist() == [0.0, 1.0]
    assert float(stats.indicator_correlation(0.26, 0.95)) < 0.1
