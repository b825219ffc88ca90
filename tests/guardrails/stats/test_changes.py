"""The change detector's pieces (stats.detector, stats.changes), fast and without a database:
the scan is the Shiryaev-Roberts and CUSUM recursions, the per-window e-values have mean at
most 1 under the null, and a guardrail's detector finds a regression after a long healthy
stretch, says since when, and keeps quiet while the candidate is healthy."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats as sps

from migrations_app.guardrails.stats import change_evidence, changes, detector
from migrations_app.guardrails.stats.detector import DetectorState
from migrations_app.guardrails.stats.inputs import ArmAggregates, Buckets, ClusterSums, MetricSums

START = datetime(2025, 6, 2, 14, 0, tzinfo=UTC)


def fresh(rows: int, j: int) -> dict[str, np.ndarray]:
    return {
        "log_r0": np.full((rows, j), -np.inf),
        "log_w0": np.full((rows, j), -np.inf),
        "since0": np.zeros((rows, j), np.int64),
        "sums0": np.zeros((rows, j, detector.SUMS)),
    }


def test_scan_is_the_recursions_and_folds_in_any_split():
    rng = np.random.default_rng(1)
    log_e = rng.normal(-0.2, 1.0, (3, 80, 2))
    sums = rng.random((3, 80, 2, detector.SUMS))
    whole = detector.scan(log_e, sums, first=0, **fresh(3, 2))
    for b in range(3):
        for j in range(2):
            r, w, start = 0.0, -math.inf, 0
            for k in range(80):
                r = (r + 1.0) * math.exp(log_e[b, k, j])
                if w <= 0:
                    w, start = 0.0, k
                w += log_e[b, k, j]
            assert whole.log_r[b, j] == pytest.approx(math.log(r))
            assert whole.log_w[b, j] == pytest.approx(w)
            assert whole.since[b, j] == start
            assert whole.sums[b, j] == pytest.approx(sums[b, start:, j].sum(axis=0))
    part = detector.scan(log_e[:, :33], sums[:, :33], first=0, **fresh(3, 2))
    rest = detector.scan(
        log_e[:, 33:], sums[:, 33:], first=33, log_r0=part.log_r, log_w0=part.log_w,
        since0=part.since, sums0=part.sums,
    )  # fmt: skip
    assert rest.log_r == pytest.approx(whole.log_r)
    assert rest.log_w == pytest.approx(whole.log_w)
    assert (rest.since == whole.since).all()
    assert rest.sums == pytest.approx(whole.sums)


@pytest.mark.parametrize("w", [1.0, 0.25, 3.0])
def test_rate_evalues_average_one_at_the_boundary_and_less_inside(w):
    """Exact expectation over the candidate's share of a window's M errors."""
    m = 40
    x = np.arange(m + 1)
    log_e, _ = change_evidence.rate_evidence(
        np.full(m + 1, 1000.0), m - x, np.full(m + 1, 1000.0 * w), x, limit=1.5, harm="increase"
    )
    for theta, most in ((1.5, 1.0 + 1e-9), (1.0, 0.999), (0.5, 0.99)):
        q = theta * w / (1 + theta * w)
        mean = (sps.binom.pmf(x, m, q)[:, None] * np.exp(log_e)).sum(axis=0)
        assert (mean <= most).all(), (theta, mean)
    at_boundary = (sps.binom.pmf(x, m, 1.5 * w / (1 + 1.5 * w))[:, None] * np.exp(log_e)).sum(0)
    assert at_boundary == pytest.approx(1.0)


def test_quantile_evalue_is_the_smaller_side():
    log_e, sums = change_evidence.quantile_evidence(
        1000.0, np.array([10.0, 60.0]), 1000.0, np.array([150.0, 150.0]), tail=0.05
    )
    # Threshold 0: control rarely above it, the candidate often above its bound: evidence.
    # Threshold 1: control above it 6 % of the time: no evidence that its p95 is below it.
    assert log_e[0] > 5 and log_e[1] < 0
    assert sums.shape == (2, detector.SUMS) and sums[1].tolist() == [1000, 60, 1000, 150]


def test_threshold_is_the_arl_or_the_planned_step_over_alpha():
    arl_only = detector.log_threshold(alpha=0.01, planned_minutes=0)
    assert arl_only == pytest.approx(math.log(30 * 1440))
    planned = detector.log_threshold(alpha=0.01, planned_minutes=600)
    assert planned == pytest.approx(math.log(600 / 0.005))
    short = detector.log_threshold(alpha=0.01, planned_minutes=60, arl_days=365)
    assert short == pytest.approx(math.log(365 * 1440))


def counts(rng: np.random.Generator, n: int, p: float) -> ArmAggregates:
    e = int(rng.binomial(n, p))
    return ArmAggregates(requests=n, errors=e, error_clusters=ClusterSums(n, e, e, n, e, e, n))


def run_windows(guard, series, make, windows: int, *, alpha=0.002, planned=600.0):
    """Feed ``windows`` windows one by one as the engine would (each committed after the
    look that first sees it complete); return the readings."""
    state, total_a, total_b = DetectorState(), ArmAggregates(), ArmAggregates()
    log_a = detector.log_threshold(alpha=alpha, planned_minutes=planned)
    readings = []
    for w in range(windows):
        a, b = make(w)
        total_a, total_b = total_a + a, total_b + b
        state, change = changes.detect(
            guard, series, control_total=total_a, candidate_total=total_b,
            committed=[changes.Window(w, a, b)], recent=[], state=state, alpha=alpha,
            log_threshold=log_a, stage_start=START,
        )  # fmt: skip
        readings.append(change)
    return readings, state


ERRORS = changes.Guard("error_rate", 1.5, "relative", "increase")


def test_a_regression_after_hours_of_health_is_found_and_dated():
    rng = np.random.default_rng(2)
    series = changes.series_for("error_rate", "relative")

    def make(w: int):
        return counts(rng, 1500, 0.02), counts(rng, 1500, 0.06 if w >= 600 else 0.02)

    readings, state = run_windows(ERRORS, series, make, 610)
    fired = [i for i, c in enumerate(readings) if c.fired]
    assert fired and 600 <= fired[0] <= 606
    first = readings[fired[0]]
    assert abs(first.since - 600) <= 1
    assert "since 00:00 UTC" in first.summary or "since 23:59 UTC" in first.summary
    assert first.summary.startswith("change detected: candidate error rate has been")
    assert "before that it was" in first.summary and "for 10 h" in first.summary
    assert first.estimate > 2.0 and first.bound > 1.0
    assert max(c.log_statistic for c in readings[:600]) < first.log_threshold
    # Stored and read back, the state folds the next window the same way.
    assert DetectorState.from_dict(state.to_dict()) == state


def test_a_healthy_candidate_keeps_the_detector_quiet():
    rng = np.random.default_rng(3)
    series = changes.series_for("error_rate", "relative")
    readings, _ = run_windows(
        ERRORS, series, lambda w: (counts(rng, 1500, 0.02), counts(rng, 1500, 0.02)), 600
    )
    assert not any(c.fired for c in readings)
    assert max(c.log_statistic for c in readings) < readings[0].log_threshold - 5


def test_committed_windows_fold_once_and_recent_ones_are_not_stored():
    rng = np.random.default_rng(4)
    series = changes.series_for("error_rate", "relative")
    windows = [changes.Window(w, counts(rng, 500, 0.02), counts(rng, 500, 0.02)) for w in range(5)]
    total = ArmAggregates.merge(w.control for w in windows)
    kw = dict(control_total=total, candidate_total=total, alpha=0.01, log_threshold=10.0,
              stage_start=START)  # fmt: skip
    state, first = changes.detect(ERRORS, series, committed=windows[:3], recent=windows[3:],
                                  state=DetectorState(), **kw)  # fmt: skip
    assert state.committed == 2 and state.windows == 3
    again, second = changes.detect(ERRORS, series, committed=windows[:3], recent=windows[3:],
                                   state=state, **kw)  # fmt: skip
    assert again == state and second.log_statistic == pytest.approx(first.log_statistic)


def latency_arm(rng: np.random.Generator, n: int, factor: float) -> ArmAggregates:
    values = 800 * factor * np.exp(rng.normal(0, 0.5, n))
    return ArmAggregates(requests=n, latency=Buckets.from_values(values))


def test_a_doubled_p95_after_a_healthy_stretch_is_found():
    rng = np.random.default_rng(5)
    guard = changes.Guard("latency_p95", 1.3, "relative", "increase")
    series = changes.series_for("latency_p95", "relative")

    def make(w: int):
        return latency_arm(rng, 400, 1.0), latency_arm(rng, 400, 2.0 if w >= 120 else 1.0)

    readings, state = run_windows(guard, series, make, 130)
    fired = [i for i, c in enumerate(readings) if c.fired]
    assert fired and 120 <= fired[0] <= 125
    assert not any(c.fired for c in readings[:120])
    assert state.reference == pytest.approx(800 * math.exp(1.645 * 0.5), rel=0.1)
    assert "of candidate requests took longer than 1.3x control's p95" in readings[fired[0]].summary


def score_arm(rng: np.random.Generator, n: int, mean: float) -> ArmAggregates:
    x = np.clip(rng.normal(mean, 0.3, n), 0, 1)
    return ArmAggregates(
        feedback_n=n, feedback_sum=float(x.sum()), feedback_sum_sq=float((x * x).sum()),
        feedback_clusters=ClusterSums.from_units(x, np.ones(n)),
    )  # fmt: skip


def test_a_satisfaction_drop_is_found_in_points():
    rng = np.random.default_rng(6)
    guard = changes.Guard("satisfaction", 0.1, "absolute", "decrease")
    series = changes.series_for("satisfaction", "absolute")

    def make(w: int):
        return score_arm(rng, 100, 0.7), score_arm(rng, 100, 0.45 if w >= 60 else 0.7)

    readings, _ = run_windows(guard, series, make, 80)
    fired = [i for i, c in enumerate(readings) if c.fired]
    assert fired and fired[0] >= 60 and not any(c.fired for c in readings[:60])
    assert readings[fired[0]].estimate < -0.15 and readings[fired[0]].bound < -0.1


def test_every_kind_of_guardrail_gets_a_detector():
    assert changes.series_for("error_rate", "relative").family == "rate"
    assert changes.series_for("error_rate", "absolute").family == "mean"
    assert changes.series_for("latency_p99", "relative").quantile == 0.99
    assert changes.series_for("ttft_p95", "relative").source == "ttft"
    assert changes.series_for("cost_per_request", "relative").family == "mean"
    task = changes.series_for("task_done", "absolute", measure_kind="rate")
    assert task.family == "mean"
    arm = ArmAggregates(metrics={"task_done": MetricSums(10, 8.0, 8.0, ClusterSums(10))})
    assert task.read(arm)[:3] == (10, 8.0, 8.0)
    assert changes.series_for("refusal", "relative", measure_kind="rate").family == "rate"
    assert changes.series_for("something_else", "relative") is None


def test_the_quantile_windows_fold_at_once_as_window_by_window():
    """The vectorised pass (every window's counts and the reference in one go) gives the
    e-values, sums and reference of the per-window definition: count_above at each threshold
    of the reference carried from the windows before (next_reference), then the evidence."""
    rng = np.random.default_rng(41)
    guard = changes.Guard("latency_p95", 1.3, "relative", "increase")
    series = changes.series_for("latency_p95", "relative")
    assert series is not None
    params = changes._Params(1.3, 0.0, margin_a=0.004, margin_b=0.002)
    windows = []
    for i in range(40):
        n = int(rng.integers(0, 90))  # some windows below REFERENCE_MIN, some empty
        factor = 2.0 if i >= 25 else 1.0
        lat_a = rng.lognormal(np.log(800), 0.5, n)
        lat_b = rng.lognormal(np.log(800), 0.5, n) * factor
        lat_a[: n // 10] = 0.0  # the zero bucket counts in the totals
        windows.append(
            changes.Window(
                i,
                ArmAggregates(latency=Buckets.from_values(lat_a)),
                ArmAggregates(latency=Buckets.from_values(lat_b)),
            )
        )
    for reference in (None, 750.0):
        log_e, sums, after = changes._quantile_windows(guard, series, windows, params, reference)
        ref = reference
        for i, w in enumerate(windows):
            if ref is None:
                above_a = above_b = np.zeros(len(change_evidence.QUANTILE_STEPS))
                n_a = n_b = 0.0
            else:
                t = ref * np.asarray(change_evidence.QUANTILE_STEPS)
                above_a = np.array([change_evidence.count_above(w.control.latency, x, straddle=True) for x in t])  # fmt: skip
                above_b = np.array([change_evidence.count_above(w.candidate.latency, x * 1.3, straddle=False) for x in t])  # fmt: skip
                n_a, n_b = float(w.control.latency.total), float(w.candidate.latency.total)
            one, one_sums = change_evidence.quantile_evidence(
                n_a, above_a, n_b, above_b, tail=0.05, margin_a=0.004, margin_b=0.002
            )
            np.testing.assert_allclose(log_e[i], one, rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(sums[i], one_sums)
            ref = change_evidence.next_reference(ref, w.control.latency, 0.95)
        assert after == ref
