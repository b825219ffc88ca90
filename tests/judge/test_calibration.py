"""Calibration on constructed label sets whose answers are known (judge.calibration, pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from migrations_app.judge import calibration as cal


def pairs(counts: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    """(judge, human) verdict lists with ``counts`` of each (judge, human) combination."""
    judge, human = [], []
    for (j, h), n in counts.items():
        judge += [j] * n
        human += [h] * n
    return judge, human


def test_kappa_of_known_tables():
    # Perfect agreement over three classes.
    assert cal.cohen_kappa(*pairs({("candidate", "candidate"): 5, ("tie", "tie"): 3,
                                   ("control", "control"): 7})) == 1.0  # fmt: skip
    # p_o = 35/50 = 0.7; judge 25/25, people 30/20 candidate/control: p_e = 0.5: kappa 0.4.
    judge, human = pairs({
        ("candidate", "candidate"): 20, ("control", "control"): 15,
        ("candidate", "control"): 5, ("control", "candidate"): 10,
    })  # fmt: skip
    assert cal.cohen_kappa(judge, human) == pytest.approx(0.4)
    # A judge that swaps the arms on a balanced set: p_o = 0, p_e = 0.5, kappa = -1.
    assert cal.cohen_kappa(*pairs({("candidate", "control"): 10,
                                   ("control", "candidate"): 10})) == pytest.approx(-1.0)  # fmt: skip
    # A judge that always says "candidate", whatever people say: no agreement beyond chance.
    assert cal.cohen_kappa(*pairs({("candidate", "candidate"): 6, ("candidate", "tie"): 3,
                                   ("candidate", "control"): 9})) == pytest.approx(0.0)  # fmt: skip
    # Both always the same one class: chance explains it all.
    assert cal.cohen_kappa(["tie"] * 4, ["tie"] * 4) == 0.0
    assert math.isnan(cal.cohen_kappa([], []))
    with pytest.raises(ValueError, match="unknown verdict 'A'"):
        cal.cohen_kappa(["A"], ["tie"])


def test_kappa_three_classes_by_hand():
    """Rows judge, columns people (candidate, tie, control): [[10, 2, 1], [3, 8, 2], [0, 4, 20]].
    n = 50, p_o = 38/50; judge marginals 13, 13, 24; people 13, 14, 23;
    p_e = (13*13 + 13*14 + 24*23) / 2500 = 903/2500; kappa = (1900 - 903) / (2500 - 903)."""
    table = [[10, 2, 1], [3, 8, 2], [0, 4, 20]]
    counts = {(cal.CLASSES[i], cal.CLASSES[j]): table[i][j] for i in range(3) for j in range(3)}
    assert cal.cohen_kappa(*pairs(counts)) == pytest.approx(997 / 1597)


def test_independent_raters_have_kappa_near_zero_and_the_interval_covers_it():
    rng = np.random.default_rng(3)
    judge = list(rng.choice(cal.CLASSES, 400))
    human = list(rng.choice(cal.CLASSES, 400))
    kappa = cal.cohen_kappa(judge, human)
    lo, hi = cal.kappa_interval(judge, human)
    assert abs(kappa) < 0.1 and lo < 0.0 < hi
    assert lo < kappa < hi


def test_the_interval_narrows_with_labels_and_is_reproducible():
    rng = np.random.default_rng(4)

    def agreeing(n: int) -> tuple[list[str], list[str]]:
        human = list(rng.choice(cal.CLASSES, n))
        judge = [h if rng.random() < 0.8 else str(rng.choice(cal.CLASSES)) for h in human]
        return judge, human

    few, many = agreeing(50), agreeing(2000)
    lo_few, hi_few = cal.kappa_interval(*few)
    lo_many, hi_many = cal.kappa_interval(*many)
    assert hi_many - lo_many < (hi_few - lo_few) / 3
    assert cal.kappa_interval(*few) == (lo_few, hi_few)  # seeded: the same on every view
    assert lo_many <= cal.cohen_kappa(*many) <= hi_many
    assert math.isnan(cal.kappa_interval(["tie"], ["tie"])[0])


def test_position_and_length_bias_shares():
    """A judge that picks the first answer shown 70 times in 100 decisive verdicts."""
    s = cal.share(70, 100)
    assert s.share == 0.7 and s.lower < 0.7 < s.upper and s.lower > 0.5  # clearly biased
    assert cal.share(52, 100).lower < 0.5 < cal.share(52, 100).upper  # not told from none
    assert math.isnan(cal.share(0, 0).share)
    c = cal.calibrate(
        *pairs({("candidate", "candidate"): 30, ("control", "control"): 30}),
        first_chosen=70, decisive=100, longer_chosen=40, length_decisive=80,
    )  # fmt: skip
    assert c.position.share == 0.7 and c.length.share == 0.5
    assert c.to_dict()["position_bias"]["hits"] == 70


def test_below_the_floor_the_judge_only_alerts():
    perfect = {("candidate", "candidate"): 20, ("tie", "tie"): 10, ("control", "control"): 19}
    c = cal.calibrate(*pairs(perfect))  # 49 labels, all agreeing
    assert not c.trusted and c.labels == 49
    assert c.why.startswith("49 of the 50 human labels the plan asks for")
    perfect[("control", "control")] = 20  # the 50th
    c = cal.calibrate(*pairs(perfect))
    assert c.trusted and c.kappa == 1.0 and "may roll back or hold" in c.why
    # Many labels, but a judge that agrees only a little: kappa's lower bound under 0.4.
    rng = np.random.default_rng(5)
    human = list(rng.choice(cal.CLASSES, 300))
    judge = [h if rng.random() < 0.35 else str(rng.choice(cal.CLASSES)) for h in human]
    c = cal.calibrate(judge, human)
    assert not c.trusted and c.kappa_lower < 0.4
    assert "agrees too little with people" in c.why and "only alerts" in c.why
    # The floor is the plan's: a lenient one trusts the same labels.
    assert cal.calibrate(judge, human, floor=cal.Floor(min_labels=10, min_kappa=0.1)).trusted


def test_ppi_value_is_unbiased_for_the_human_preference():
    """A judge biased towards the candidate (+0.3 net) over pairs people see as even (0 net):
    the mean of z is the people's, not the judge's."""
    rng = np.random.default_rng(6)
    n, pi = 200_000, 0.1
    human = rng.choice([-1.0, 0.0, 1.0], n, p=[0.3, 0.4, 0.3])
    judge = np.where(rng.random(n) < 0.7, human, rng.choice([0.0, 1.0], n))
    labelled = rng.random(n) < pi
    z = [
        cal.ppi_value(j, h if lab else None, pi)
        for j, h, lab in zip(judge, human, labelled, strict=True)
    ]
    assert judge.mean() > 0.1
    assert np.mean(z) == pytest.approx(human.mean(), abs=0.02)
    with pytest.raises(ValueError):
        cal.ppi_value(1.0, 1.0, 0.0)
