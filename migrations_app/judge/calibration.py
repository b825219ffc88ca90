"""Can the judge be trusted? Pure functions over plain data (no ORM, no clock).

People label a random sample of shadow pairs blind (the order shown drawn at random, the
models' names hidden): candidate better, tie, control better. Against those labels:

- Cohen's kappa between the judge and people over the three classes, with a percentile
  bootstrap interval over the labelled pairs (reference/quality.md, "Trusting the judge");
- its position bias: the share of its decisive verdicts that favour the answer shown first
  (0.5 is none; MT-Bench measured strong judges at 0.6-0.7 without the swap);
- its length bias: the share of its decisive verdicts that favour the longer answer (0.5 is
  none; a candidate that answers shorter *and* worse moves it too, so read it beside kappa);
- the plan's floor (default: at least 50 labels and kappa's lower bound >= 0.4) decides
  whether the judge's guardrail may roll back or hold; below it, it may only alert.

And, when labels exist, the human preference itself by prediction-powered inference
(Angelopoulos et al., Science 2023, in its inverse-probability form): ``ppi_values``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

#: The verdict classes, in the arms' terms (what the judge's and a person's "A" or "B" mean
#: once the order shown is undone).
CLASSES = ("candidate", "tie", "control")
#: A person's answer that is no label: they could not tell, or did not want to.
SKIP = "skip"
#: What a class is worth as a paired preference s (candidate minus control).
PREFERENCE = {"candidate": 1.0, "tie": 0.0, "control": -1.0}

DEFAULT_MIN_LABELS = 50
DEFAULT_MIN_KAPPA = 0.4
#: Two-sided level of kappa's interval: its lower bound is what the floor compares.
KAPPA_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
#: A fixed seed: the same labels give the same interval on every page view and evaluation.
BOOTSTRAP_SEED = 20231115

_INDEX = {name: i for i, name in enumerate(CLASSES)}


def cohen_kappa(judge: Sequence[str], human: Sequence[str]) -> float:
    """Cohen's kappa of two raters over :data:`CLASSES`: (p_o - p_e) / (1 - p_e). NaN with
    no pairs; 0 when chance agreement is already certain (both always said the same one
    class: nothing tells agreement from chance)."""
    if len(judge) != len(human):
        raise ValueError("judge and human verdicts must pair up")
    if not judge:
        return math.nan
    codes = _codes(judge, human)
    return float(_kappa(np.bincount(codes, minlength=9).reshape(1, 9), len(judge))[0])


def _codes(judge: Sequence[str], human: Sequence[str]) -> np.ndarray:
    try:
        return np.array(
            [_INDEX[j] * 3 + _INDEX[h] for j, h in zip(judge, human, strict=True)],
            dtype=np.int64,
        )
    except KeyError as exc:
        raise ValueError(f"unknown verdict {exc.args[0]!r}; expected one of {CLASSES}") from exc


def _kappa(confusion: np.ndarray, n: int) -> np.ndarray:
    """Kappa per row of flattened 3x3 confusion counts (judge x human)."""
    table = confusion.reshape(-1, 3, 3).astype(np.float64) / n
    observed = np.trace(table, axis1=1, axis2=2)
    chance = (table.sum(axis=2) * table.sum(axis=1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = (observed - chance) / (1.0 - chance)
    return np.where(chance >= 1.0 - 1e-12, 0.0, kappa)


def kappa_interval(
    judge: Sequence[str],
    human: Sequence[str],
    *,
    level: float = KAPPA_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of kappa over the labelled pairs (resampled whole, as
    the labels' unit is the pair). (nan, nan) with fewer than two pairs."""
    n = len(judge)
    if n < 2:
        return math.nan, math.nan
    codes = _codes(judge, human)
    rng = np.random.default_rng(seed)
    picks = codes[rng.integers(0, n, size=(resamples, n))]
    cells = (picks + 9 * np.arange(resamples)[:, None]).ravel()
    confusion = np.bincount(cells, minlength=9 * resamples).reshape(resamples, 9)
    kappas = _kappa(confusion, n)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(kappas, [tail, 1.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True, slots=True)
class Share:
    """How many of ``n`` decisive verdicts did the thing (``hits``), with a Wilson interval."""

    hits: int
    n: int
    lower: float
    upper: float

    @property
    def share(self) -> float:
        return self.hits / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "hits": self.hits,
            "n": self.n,
            "share": _json(self.share),
            "lower": _json(self.lower),
            "upper": _json(self.upper),
        }


def share(hits: int, n: int, level: float = 0.95) -> Share:
    """``hits`` of ``n`` with its Wilson score interval (two-sided ``level``)."""
    if n <= 0:
        return Share(0, 0, math.nan, math.nan)
    z = float(special.ndtri(1.0 - (1.0 - level) / 2.0))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Share(hits, n, max(0.0, centre - half), min(1.0, centre + half))


def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Floor:
    """The plan's setting: how much agreement with people the judge needs before its
    guardrail may roll back or hold (below it, the guardrail only alerts)."""

    min_labels: int = DEFAULT_MIN_LABELS
    min_kappa: float = DEFAULT_MIN_KAPPA


@dataclass(frozen=True, slots=True)
class Calibration:
    """The judge against people, and whether its guardrail may act."""

    labels: int  # labelled pairs the judge gave a verdict on (skips and unparsed not counted)
    agreement: float  # share of them where the judge and the person agree
    kappa: float
    kappa_lower: float
    kappa_upper: float
    position: Share  # decisive verdicts that favour the answer shown first
    length: Share  # decisive verdicts (unequal lengths) that favour the longer answer
    floor: Floor
    trusted: bool
    why: str  # the reason in words, for the dashboard, the verdict's note and the page

    def to_dict(self) -> dict[str, object]:
        return {
            "labels": self.labels,
            "agreement": _json(self.agreement),
            "kappa": _json(self.kappa),
            "kappa_lower": _json(self.kappa_lower),
            "kappa_upper": _json(self.kappa_upper),
            "position_bias": self.position.to_dict(),
            "length_bias": self.length.to_dict(),
            "min_labels": self.floor.min_labels,
            "min_kappa": self.floor.min_kappa,
            "trusted": self.trusted,
            "why": self.why,
        }


def calibrate(
    judge: Sequence[str],
    human: Sequence[str],
    *,
    first_chosen: int = 0,
    decisive: int = 0,
    longer_chosen: int = 0,
    length_decisive: int = 0,
    floor: Floor = Floor(),
) -> Calibration:
    """The judge's calibration from its verdicts on the labelled pairs (``judge``, each in
    :data:`CLASSES`) beside the people's (``human``), and its bias counts over every pair it
    judged. Pure; the interval's bootstrap is seeded, so the result is reproducible."""
    n = len(judge)
    kappa = cohen_kappa(judge, human)
    lower, upper = kappa_interval(judge, human)
    agreement = sum(j == h for j, h in zip(judge, human, strict=True)) / n if n else math.nan
    trusted, why = trust(n, kappa, lower, upper, floor)
    return Calibration(
        labels=n,
        agreement=agreement,
        kappa=kappa,
        kappa_lower=lower,
        kappa_upper=upper,
        position=share(first_chosen, decisive),
        length=share(longer_chosen, length_decisive),
        floor=floor,
        trusted=trusted,
        why=why,
    )


def trust(labels: int, kappa: float, lower: float, upper: float, floor: Floor) -> tuple[bool, str]:
    """Whether the judge's guardrail may roll back or hold, and why, in words."""
    if labels < floor.min_labels:
        return False, (
            f"{labels} of the {floor.min_labels} human labels the plan asks for before the "
            f"judge's guardrail may roll back or hold: until then it only alerts"
        )
    interval = f"kappa {kappa:.2f}, 95% interval {lower:.2f} to {upper:.2f}, over {labels} labels"
    if not (lower >= floor.min_kappa):  # a NaN bound is not trust either
        return False, (
            f"the judge agrees too little with people to act on ({interval}; the plan asks "
            f"for a lower bound of at least {floor.min_kappa:.2f}): its guardrail only alerts"
        )
    return True, (
        f"the judge agrees with people ({interval}, at least {floor.min_kappa:.2f} asked): "
        f"its guardrail may roll back or hold"
    )


# --- the human preference, by prediction-powered inference ---------------------------------


def ppi_value(judge: float, human: float | None, probability: float) -> float:
    """One pair's z = j + (L / pi) (h - j) (reference/quality.md): the judge's preference
    ``judge`` (s in {-1, 0, 1}) for a pair not drawn for labelling (``human`` None: L = 0),
    or corrected by the person's ``human`` for a pair that was drawn, with known
    ``probability`` pi, and labelled (L = 1). Its mean is the mean *human* preference
    whatever the judge's bias; its range is 1 + 2 / pi. The caller leaves out a pair drawn
    but not labelled yet (it has no z until it is)."""
    if not 0.0 < probability <= 1.0:
        raise ValueError("probability must be in (0, 1]")
    if human is None:
        return judge
    return judge + (human - judge) / probability
