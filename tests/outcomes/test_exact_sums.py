"""exact_sums.group_sums gives every group what math.fsum gives it, bit for bit: whole numbers,
floats of every magnitude and sign, zeros, cancelling terms, empty groups and groups of one,
rows in several groups, and the values math.fsum itself must take (inf, nan, extreme
exponents)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from migrations_app.outcomes import exact_sums
from migrations_app.outcomes.exact_sums import group_sums


@pytest.fixture(autouse=True, params=["pieces", "few"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test by pieces (numpy) and, where a column has fewer than exact_sums._FEW terms,
    as math.fsum itself."""
    if request.param == "pieces":
        monkeypatch.setattr(exact_sums, "_FEW", 0)


def reference(values: np.ndarray, rows: list[int], bounds: list[int]) -> list[list[float]]:
    return [
        [math.fsum(values[rows[a:b], c].tolist()) for c in range(values.shape[1])]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def random_value(rng: random.Random, kind: str) -> float:
    if kind == "whole":
        return float(rng.choice([0, 1, 2, rng.randrange(10**6), rng.randrange(10**15)]))
    if kind == "small":
        return rng.choice([0.0, -0.0, rng.random(), rng.lognormvariate(2, 1)])
    if kind == "wide":
        return rng.choice([-1, 1]) * rng.random() * 10.0 ** rng.randrange(-30, 30)
    if kind == "cancel":
        return rng.choice([1e16, -1e16, 1.0, -1.0, 0.1, -0.1, 2.0**-60, 3.0])
    return rng.choice([-1, 1]) * rng.random() * 2.0 ** rng.randrange(-250, 250)  # very wide


def random_case(rng: random.Random) -> tuple[np.ndarray, list[int], list[int]]:
    n, columns = rng.randrange(1, 300), rng.randrange(1, 6)
    kinds = [rng.choice(["whole", "small", "wide", "cancel", "huge"]) for _ in range(columns)]
    values = np.array([[random_value(rng, k) for k in kinds] for _ in range(n)])
    rows: list[int] = []
    bounds = [0]
    for _ in range(rng.randrange(1, 12)):
        size = rng.choice([0, 1, rng.randrange(n + 1), n])
        rows += [rng.randrange(n) for _ in range(size)]  # repeats too
        bounds.append(len(rows))
    return values, rows, bounds


def same(got: np.ndarray, expected: list[list[float]]) -> None:
    for g, row in enumerate(expected):
        for c, value in enumerate(row):
            assert repr(float(got[g, c])) == repr(value), (g, c)


def test_every_group_gets_math_fsum_of_its_rows() -> None:
    rng = random.Random(21)
    for _ in range(400):
        values, rows, bounds = random_case(rng)
        same(group_sums(values, rows, bounds), reference(values, rows, bounds))


def test_large_groups_of_full_mantissas() -> None:
    # Many terms per group: fewer bits per piece, and sums that need every piece.
    rng = np.random.default_rng(22)
    values = np.column_stack([
        rng.lognormal(3, 2, 50_000), rng.normal(0, 1e6, 50_000), rng.integers(0, 10**9, 50_000)
    ]).astype(np.float64)  # fmt: skip
    rows = rng.integers(0, 50_000, 150_000).tolist()
    bounds = [0, 1, 10, 1_000, 60_000, 60_000, 150_000]
    same(group_sums(values, rows, bounds), reference(values, rows, bounds))


def test_one_column_and_no_rows() -> None:
    column = np.array([0.1, 0.2, 0.3])
    assert group_sums(column, [0, 1, 2, 2], [0, 3, 4]).tolist() == [
        math.fsum([0.1, 0.2, 0.3]), 0.3
    ]  # fmt: skip
    assert group_sums(np.zeros((0, 2)), [], [0, 0, 0]).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert repr(float(group_sums(np.array([-0.0]), [0], [0, 1])[0])) == repr(math.fsum([-0.0]))


@pytest.mark.parametrize(
    "column",
    [
        [math.inf, 1.0, 2.0],
        [math.nan, 1.0, 2.0],
        [1e-310, 5e-324, 1e-300],  # subnormals
        [1e300, -1e300, 1e-300],  # past the pieces' range: math.fsum's own
    ],
)
def test_what_math_fsum_takes_itself(column: list[float]) -> None:
    values = np.array(column).reshape(-1, 1)
    got = group_sums(values, [0, 1, 2, 1], [0, 2, 4])
    expected = reference(values, [0, 1, 2, 1], [0, 2, 4])
    assert [repr(v) for v in got[:, 0].tolist()] == [repr(r[0]) for r in expected]
