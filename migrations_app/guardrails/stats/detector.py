"""The e-detector every guardrail runs beside its cumulative test: a Shiryaev-Roberts sum of
e-processes, one started at every minute window of the stage, over a few alternatives.

Shin, Ramdas & Rinaldo, "E-detectors: a nonparametric framework for sequential change
detection" (2022-2024). Each window w of a stage gives, per alternative j, an e-value e_wj
for the guardrail's null (the candidate within tolerance) given everything before w: its
expectation is at most 1 under the null. The e-process started at window k is the product
of the e-values from k on; the detector sums them over every start k and mixes the sums over
the alternatives with fixed weights pi_j:

    R_j(w) = (R_j(w - 1) + 1) e_wj          (Shiryaev-Roberts, one scalar per alternative)
    R(w)   = sum_j pi_j R_j(w)               alarm when R >= A

Under the null R(w) - (windows so far) is a supermartingale, so by optional stopping the
detector's average run length to a false alarm is at least A windows, and by Ville's
inequality on R - w + H >= 0 the chance of any false alarm within H windows is at most H / A.
A regression that starts at window k makes the e-process started there grow at the rate of
its evidence whatever happened before k: the delay depends on log A, not on the stage's age.

Looks come every 15 s, windows every minute: a look folds the committed windows' R and adds
the current (partial) windows' e-values, which are likelihood ratios over the requests seen
so far and so e-values at any look. New e-processes start only at window boundaries, so the
guarantees above count windows (minutes), however often the engine looks.

Beside R, a CUSUM per alternative (max over starts instead of the sum) locates the change:
its argmax start is the window since which the candidate looks worse, said in the verdict.

Vectorised: every function here takes arrays whose last axis is the alternatives and whose
second-to-last is the windows, with any batch axes before (the simulations' rollouts), so
the engine and the simulation suite run the same code. Pure: numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from migrations_app.guardrails.stats.inputs import FloatArray

#: Share of a guardrail's alpha (per stage) spent on its change detector; the cumulative
#: tests keep the rest (the error-rate guardrail splits that between its sequence and its
#: confirmatory look as before). Half: the cumulative test is the more powerful one for a
#: regression present from the start (no change-point multiplicity), the detector the only
#: one that stays fast once the stage is old; neither dominates, so neither is starved.
DETECTOR_SHARE = 0.5

#: Default for a plan's ``detector_arl_days``: when the step has no planned duration (or has
#: outlived it) the detector raises a false alarm at most once per this many days on average.
DEFAULT_ARL_DAYS = 30.0

MINUTES_PER_DAY = 1440.0

#: The sufficient sums a component keeps since its CUSUM start, for the verdict in words:
#: control's count and sum, the candidate's count and sum (what they count is the family's).
SUMS = 4


def log_threshold(
    *, alpha: float, planned_minutes: float, arl_days: float = DEFAULT_ARL_DAYS
) -> float:
    """log A for a detector spending ``alpha`` (its share of the guardrail's alpha, of which
    half goes to the composition margin, see ``changes.margin``).

    A = max(ARL in windows, H / (alpha / 2)): the chance of a false alarm within a step's
    planned ``planned_minutes`` H is at most alpha / 2 (Ville), and whatever the step's
    length the average run length to a false alarm is at least ``arl_days``.
    """
    arl = max(arl_days, 1.0 / MINUTES_PER_DAY) * MINUTES_PER_DAY
    horizon = planned_minutes / (alpha / 2.0) if planned_minutes > 0 and alpha > 0 else 0.0
    return math.log(max(arl, horizon, 1.0))


@dataclass(frozen=True, slots=True)
class DetectorState:
    """A detector after its committed windows (the engine stores it between evaluations).

    ``committed``: index of the last folded window (minutes since the stage's first window),
    -1 before any. Per alternative: ``log_r`` the Shiryaev-Roberts statistic, ``log_w`` the
    CUSUM, ``since`` the CUSUM's start window and ``sums`` the family's sums since then.
    ``reference``: what a family carries from window to window (the quantile family's
    control quantile, in ms); ``windows``: committed windows folded.
    """

    committed: int = -1
    log_r: tuple[float, ...] = ()
    log_w: tuple[float, ...] = ()
    since: tuple[int, ...] = ()
    sums: tuple[tuple[float, ...], ...] = ()
    reference: float | None = None
    windows: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (the Evaluation's bounds); -inf logs become None."""
        return {
            "committed": self.committed,
            "log_r": [_json(v) for v in self.log_r],
            "log_w": [_json(v) for v in self.log_w],
            "since": list(self.since),
            "sums": [list(s) for s in self.sums],
            "reference": self.reference,
            "windows": self.windows,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DetectorState:
        """Inverse of :meth:`to_dict`; anything malformed reads as a fresh detector."""
        if not data:
            return cls()
        try:
            return cls(
                committed=int(data.get("committed", -1)),
                log_r=tuple(-math.inf if v is None else float(v) for v in data.get("log_r", ())),
                log_w=tuple(-math.inf if v is None else float(v) for v in data.get("log_w", ())),
                since=tuple(int(v) for v in data.get("since", ())),
                sums=tuple(tuple(float(x) for x in s) for s in data.get("sums", ())),
                reference=None if data.get("reference") is None else float(data["reference"]),
                windows=int(data.get("windows", 0)),
            )
        except (TypeError, ValueError):
            return cls()

    def arrays(
        self, components: int
    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64], FloatArray]:
        """(log_r, log_w, since, sums) as arrays for ``components`` alternatives; a state of
        another shape (the plan's guardrail changed) starts afresh."""
        if len(self.log_r) != components or len(self.sums) != components:
            return (
                np.full(components, -np.inf),
                np.full(components, -np.inf),
                np.zeros(components, dtype=np.int64),
                np.zeros((components, SUMS)),
            )
        return (
            np.asarray(self.log_r, dtype=np.float64),
            np.asarray(self.log_w, dtype=np.float64),
            np.asarray(self.since, dtype=np.int64),
            np.asarray(self.sums, dtype=np.float64).reshape(components, SUMS),
        )


def _json(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class Scan:
    """The detector after some windows: per alternative the Shiryaev-Roberts and CUSUM
    statistics (log), the CUSUM's start window and the sums since it, at the last window."""

    log_r: FloatArray
    log_w: FloatArray
    since: npt.NDArray[np.int64]
    sums: FloatArray
    # Per window (batch x windows x alternatives): the Shiryaev-Roberts statistic after each.
    path: FloatArray = field(default_factory=lambda: np.zeros(0))


def scan(
    log_e: npt.ArrayLike,
    sums: npt.ArrayLike,
    *,
    first: int,
    log_r0: npt.ArrayLike,
    log_w0: npt.ArrayLike,
    since0: npt.ArrayLike,
    sums0: npt.ArrayLike,
    keep_path: bool = False,
) -> Scan:
    """Fold windows ``first``, ``first + 1``, ... into the statistics.

    ``log_e``: (..., windows, alternatives) log e-values; ``sums``: (..., windows,
    alternatives, SUMS) each window's sums; the ``*0`` arguments: the state before
    (``log_r0`` = -inf for a fresh detector). Closed forms instead of a loop, so a week of
    windows folds in milliseconds: with L the running sum of log e over the new windows,
    R(w) = exp(L_w) (R0 + sum_{k<=w} exp(-L_{k-1})) and the CUSUM is L_w minus the running
    minimum of L (the start moves to the window after the minimum).
    """
    le = np.asarray(log_e, dtype=np.float64)
    sm = np.asarray(sums, dtype=np.float64)
    windows = le.shape[-2]
    r0 = np.asarray(log_r0, dtype=np.float64)
    w0 = np.asarray(log_w0, dtype=np.float64)
    s0 = np.asarray(since0, dtype=np.int64)
    m0 = np.asarray(sums0, dtype=np.float64)
    if windows == 0:
        return Scan(r0, w0, s0, m0)
    cum = np.cumsum(le, axis=-2)
    before = cum - le  # L_{k-1}: the sum up to the window before k
    # Shiryaev-Roberts: log of R0 + sum_k exp(-L_{k-1}), accumulated over k.
    starts = np.concatenate([r0[..., None, :], -before], axis=-2)
    acc = np.logaddexp.accumulate(starts, axis=-2)[..., 1:, :]
    path = cum + acc
    # CUSUM: max over starts of the sum since the start; the old run continues when it is
    # above 0 (its value), else it restarts at the first new window (value 0).
    carried = np.maximum(w0, 0.0)
    values = np.concatenate([carried[..., None, :], -before[..., 1:, :]], axis=-2)
    runmax = np.maximum.accumulate(values, axis=-2)
    index = np.arange(windows).reshape((windows, 1))
    best = np.maximum.accumulate(np.where(values >= runmax, index, 0), axis=-2)
    log_w = cum[..., -1, :] + runmax[..., -1, :]
    start_pos = best[..., -1, :]
    old_run = (start_pos == 0) & (w0 > 0)
    since = np.where(old_run, s0, first + start_pos)
    # Sums since the start: the new windows from the start on, plus the old run's.
    csum = np.cumsum(sm, axis=-3)
    total = csum[..., -1, :, :]
    before_start = np.take_along_axis(
        np.concatenate([np.zeros_like(csum[..., :1, :, :]), csum], axis=-3),
        start_pos[..., None, :, None],
        axis=-3,
    )[..., 0, :, :]
    kept = np.where(old_run[..., None], m0 + total, total - before_start)
    return Scan(path[..., -1, :], log_w, since, kept, path if keep_path else np.zeros(0))


def mixture(log_r: npt.ArrayLike, log_weights: Sequence[float] | FloatArray) -> FloatArray:
    """log sum_j pi_j R_j over the last axis."""
    lr = np.asarray(log_r, dtype=np.float64)
    lw = np.asarray(log_weights, dtype=np.float64)
    return np.asarray(np.logaddexp.reduce(lr + lw, axis=-1), dtype=np.float64)


def provisional(log_r: npt.ArrayLike, log_e: npt.ArrayLike) -> FloatArray:
    """The statistic with one more (partial) window: log((R + 1) e), per alternative."""
    return np.asarray(np.logaddexp(np.asarray(log_r, dtype=np.float64), 0.0) + log_e)


def log_weights(weights: Sequence[float]) -> FloatArray:
    """Mixture weights normalised to sum 1, as logs."""
    w = np.asarray(weights, dtype=np.float64)
    return np.asarray(np.log(w / w.sum()), dtype=np.float64)
