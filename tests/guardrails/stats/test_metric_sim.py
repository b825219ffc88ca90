"""The application's own metrics by simulation (reference/quality.md, "Targets for the simulation
suite"): a declared ``rate`` metric (task completed, higher is better, tolerance 3 points) and a
declared ``mean`` metric with bounds (tool calls per task in [0, 10], higher is worse,
tolerance 0.25), tested per arm in a split as the engine tests a guardrail with a ``Measure``
(stats.difference_kernel, the value range from the metric's bounds).

Users: the suite's heavy-tailed scenario (sim.heavy_requests: Pareto activity of shape 1.1 over
2,000 users per arm, a few dozen effective users), each user with their own completion
propensity or their own level, sticky by user. False rollbacks A/A and with the effect exactly
at the tolerance, 2,000 rollouts x 240 looks per scenario, at the per-guardrail alpha of the
standard plan's four guardrails plus the metric's (0.05 / 5).

Two ways of spending that alpha: the confidence sequence alone at every look (a step with no
minimum sample), and with a confirmatory look at the step's minimum sample (the sequence at
alpha / 3 and one fixed-sample test at 2 alpha / 3 on the same unit-level variance and
Student's t on the effective units; the issue's first finding was that this look, with a
sandwich variance, rejected 3.4 % against its 1.33 % share). For the rate metric the look is
the engine's: rules._test_guardrail gives a declared rate metric's guardrail the error rate's
look, and the bounds and the moment here are the functions it calls
(stats.metric_confirmatory, stats.confirmatory_look_due). The mean's look is not run by the
engine; it is measured (stats.difference_kernel with fixed=True) to say whether it could be.
"""

from __future__ import annotations

import numpy as np
import pytest

from migrations_app.guardrails import stats
from tests.guardrails.stats import sim

pytestmark = pytest.mark.slow

ALPHA = 0.05 / 5
R = 2000
MODERATE = 2.0  # Pareto shape of the power scenarios' activity (as test_judge_sim)

RATE_BASE = 0.80
RATE_TOLERANCE = 0.03  # points, higher is better
MEAN_RANGE = 10.0  # the metric's declared bounds [0, 10]
MEAN_TOLERANCE = 0.25  # higher is worse
CONCENTRATION = 10.0
LEVEL_SPREAD = 1.0
DESIGN = 1200  # the step's minimum sample per arm: the look halfway through a 2,400 run


def heavy_completions(
    rng: np.random.Generator,
    rollouts: int,
    *,
    rate: float,
    per_look: int = 10,
    shape: float = sim.HEAVY_SHAPE,
) -> sim.UnitPaths:
    """task_completed 0/1 per request: each user completes at their own propensity (Beta of
    mean 0.8, concentration ``CONCENTRATION``: some users' tasks are harder), scaled so that
    the arm's rate is exactly ``rate``."""
    a, b = RATE_BASE * CONCENTRATION, (1.0 - RATE_BASE) * CONCENTRATION

    def draw(g: np.random.Generator, users: np.ndarray, look: np.ndarray):
        p = g.beta(a, b, (users.shape[0], sim.HEAVY_USERS))
        done = g.random(users.shape) < sim.per_user(g, users, p * (rate / RATE_BASE))
        return done.astype(float), np.ones(users.shape)

    return sim.heavy_requests(rng, rollouts, per_look, sim.LOOKS, draw, shape)


def heavy_levels(
    rng: np.random.Generator,
    rollouts: int,
    *,
    shift: float = 0.0,
    per_look: int = 10,
    shape: float = sim.HEAVY_SHAPE,
) -> sim.UnitPaths:
    """Tool calls per task, a number in [0, 10]: a user's own level (uniform in 4 +-
    ``LEVEL_SPREAD``) plus request noise (uniform +-3, far from normal), plus ``shift`` in the
    candidate; the control mean is 4."""

    def draw(g: np.random.Generator, users: np.ndarray, look: np.ndarray):
        level = g.uniform(4.0 - LEVEL_SPREAD, 4.0 + LEVEL_SPREAD, (users.shape[0], sim.HEAVY_USERS))
        x = sim.per_user(g, users, level) + g.uniform(-3.0, 3.0, users.shape) + shift
        return x, np.ones(users.shape)

    return sim.heavy_requests(rng, rollouts, per_look, sim.LOOKS, draw, shape)


def regressed(
    control: sim.UnitPaths,
    candidate: sim.UnitPaths,
    *,
    kind: stats.MetricKind,
    harm: stats.Harm,
    tolerance: float,
    value_range: float,
    design: int = 0,
) -> np.ndarray:
    """Per rollout and look: does the metric's guardrail say regressed (absolute tolerance)?

    ``design`` 0: the sequence at alpha at every look. Otherwise the sequence at alpha / 3 plus
    the fixed-sample test at 2 alpha / 3 at the first look where the engine's rule says it is
    due (both arms at ``design``), whose bound then stays in the running intersection."""
    share = stats.confirmatory_share(design)
    a, b = control.arm(), candidate.arm()
    limit = stats.threshold(tolerance, "absolute", harm)
    _, lo, hi = stats.difference_kernel(
        a, b, kind=kind, alpha=ALPHA * (1.0 - share), value_range=value_range, null=limit
    )
    enough = np.minimum(control.n, candidate.n) >= stats.MIN_METRIC_SAMPLES

    def harmful(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return lo > tolerance if harm == "increase" else hi < -tolerance

    decisions = enough & harmful(lo, hi)
    if share:
        fixed_lo, fixed_hi = fixed_bounds(a, b, kind, harm, tolerance, value_range, ALPHA * share)
        first = sim.first_look(stats.confirmatory_look_due(a.n, b.n, a.y, b.y, design))
        rows = np.arange(first.size)
        at = np.maximum(first, 0)
        hit = (first >= 0) & harmful(fixed_lo, fixed_hi)[rows, at]
        decisions |= hit[:, None] & (np.arange(decisions.shape[1])[None, :] >= first[:, None])
    return decisions


def fixed_bounds(
    a: stats.RatioArm,
    b: stats.RatioArm,
    kind: stats.MetricKind,
    harm: stats.Harm,
    tolerance: float,
    value_range: float,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The confirmatory look's one fixed-sample test on the sequence's variance: a rate's is
    the engine's (stats.metric_confirmatory, what rules._test_guardrail calls), a mean's the
    sequence's kernel with Student's t on the unit-level variance (fixed=True)."""
    if kind == "rate":
        return stats.metric_confirmatory(
            a, b, tolerance=tolerance, tolerance_kind="absolute", harm=harm, alpha=alpha
        )
    limit = stats.threshold(tolerance, "absolute", harm)
    _, lo, hi = stats.difference_kernel(
        a, b, kind=kind, alpha=alpha, value_range=value_range, null=limit, fixed=True
    )
    return lo, hi


def assert_valid(decisions: np.ndarray) -> float:
    hits = int(decisions.any(axis=1).sum())
    rate = hits / decisions.shape[0]
    assert sim.rate_ok(hits, decisions.shape[0], ALPHA), f"false rollback {rate:.4f} > {ALPHA}"
    return rate


def samples_at(decisions: np.ndarray, ns: np.ndarray, power: float = 0.9) -> float:
    """The smallest n per arm by which ``power`` of the rollouts have rolled back (inf: never
    within the run)."""
    first = sim.first_look(decisions)
    hit = np.sort(np.where(first >= 0, ns[np.maximum(first, 0)], np.inf))
    return float(hit[int(np.ceil(power * hit.size)) - 1])


def rate_decisions(control: sim.UnitPaths, candidate: sim.UnitPaths, design: int = 0):
    return regressed(
        control, candidate, kind="rate", harm="decrease", tolerance=RATE_TOLERANCE,
        value_range=1.0, design=design,
    )  # fmt: skip


def mean_decisions(control: sim.UnitPaths, candidate: sim.UnitPaths, design: int = 0):
    return regressed(
        control, candidate, kind="mean", harm="increase", tolerance=MEAN_TOLERANCE,
        value_range=MEAN_RANGE, design=design,
    )  # fmt: skip


# --- the rate metric ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def completions_control() -> sim.UnitPaths:
    return heavy_completions(np.random.default_rng(101), R, rate=RATE_BASE)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("rate", "seed"), [(RATE_BASE, 102), (RATE_BASE - RATE_TOLERANCE, 103)], ids=["aa", "at"]
)
def test_rate_false_rollbacks_under_heavy_tailed_users(completions_control, rate, seed):
    """A/A and the candidate exactly 3 points worse: the sequence alone and with the look at
    the step's minimum both stay at or under alpha. Measured 0.0005 / 0.0005 A/A and 0.0035 /
    0.0075 at the tolerance (sequence / with the look) against 0.01."""
    candidate = heavy_completions(np.random.default_rng(seed), R, rate=rate)
    assert_valid(rate_decisions(completions_control, candidate))
    assert_valid(rate_decisions(completions_control, candidate, design=DESIGN))


@pytest.mark.timeout(600)
def test_rate_power_by_3000_requests():
    """Target: task completed 80 % -> 72 % against a 3-point tolerance rolled back by 3,000
    requests per arm in >= 90 % of rollouts, users of Pareto(2) activity (as the judge's power
    scenarios). Measured (seed 104): the sequence alone (a step with no minimum sample) 0.78
    by 3,000; with the engine's confirmatory look at a 3,000-per-arm step minimum 0.91. Under the
    heavy tail (shape 1.1) the sequence reaches 0.16 by 3,000. The same Pareto(2) users exactly
    at the tolerance are not rolled back either way."""
    rng = np.random.default_rng(104)
    control = heavy_completions(rng, R, rate=RATE_BASE, per_look=15, shape=MODERATE)
    worse = heavy_completions(rng, R, rate=0.72, per_look=15, shape=MODERATE)
    ns = control.n[0]
    sequence = rate_decisions(control, worse)[:, ns <= 3000].any(axis=1).mean()
    looked = rate_decisions(control, worse, design=3000)[:, ns <= 3000].any(axis=1).mean()
    assert sequence >= 0.7
    assert looked >= 0.9
    at = heavy_completions(rng, R, rate=RATE_BASE - RATE_TOLERANCE, per_look=15, shape=MODERATE)
    assert_valid(rate_decisions(control, at))
    assert_valid(rate_decisions(control, at, design=3000))


# --- the mean metric ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def levels_control() -> sim.UnitPaths:
    return heavy_levels(np.random.default_rng(111), R)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("shift", "seed"), [(0.0, 112), (MEAN_TOLERANCE, 113)], ids=["aa", "at"])
def test_mean_false_rollbacks_under_heavy_tailed_users(levels_control, shift, seed):
    """Measured 0.000 / 0.000 A/A and 0.0015 / 0.0045 at the tolerance (sequence / with the
    look) against 0.01."""
    candidate = heavy_levels(np.random.default_rng(seed), R, shift=shift)
    assert_valid(mean_decisions(levels_control, candidate))
    assert_valid(mean_decisions(levels_control, candidate, design=DESIGN))


@pytest.mark.timeout(600)
def test_mean_power_requests_at_90_percent():
    """Effect twice the tolerance (+0.5 tool calls): the requests per arm by which 90 % of
    rollouts have rolled back, with Pareto(2) activity (reference/quality.md asks for the
    figure). Measured 3,180 per arm (seed 114). Under the heavy tail (shape 1.1, a few
    dozen effective users) 0.17 by 4,800: honest rather than powerful, as the judge's."""
    rng = np.random.default_rng(114)
    control = heavy_levels(rng, R, shape=MODERATE, per_look=20)
    worse = heavy_levels(rng, R, shift=2 * MEAN_TOLERANCE, shape=MODERATE, per_look=20)
    assert samples_at(mean_decisions(control, worse), control.n[0]) <= 4000
