"""What a compared shadow pair adds to its stage's paired aggregate beyond the failure table and
the scores' means: its paired metric values (``comparison["paired"]``: the judge's preference,
and any per-request metric both answers have), and the judge's counts. Pure reads of one
stored comparison."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFERENCE = "judge_preference"  # the judge's paired metric (judge.measures)


def paired_values(comparison: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The pair's per-request metric values, ``{metric: (control's, candidate's)}``."""
    stored = comparison.get("paired")
    if not isinstance(stored, Mapping):
        return {}
    out: dict[str, tuple[float, float]] = {}
    for name, values in stored.items():
        if isinstance(values, list | tuple) and len(values) == 2:
            a, b = values
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
                out[str(name)] = (float(a), float(b))
    return out


#: The judge's counts a shadow aggregate keeps (``judge_<name>``), for the dashboard and the
#: calibration: verdicts by winner, those that could not be read, that failed, that the
#: budget refused; decisive verdicts, those for the answer shown first, and those between
#: answers of unequal length, those for the longer one.
JUDGE_COUNTS = (
    "candidate",
    "tie",
    "control",
    "unparsed",
    "failed",
    "budget",
    "decisive",
    "first",
    "length_decisive",
    "longer",
)


def judge_counts(comparison: Mapping[str, Any]) -> dict[str, int]:
    """What one compared pair adds to its stage's judge counts (see :data:`JUDGE_COUNTS`)."""
    verdict = comparison.get("judge")
    if not isinstance(verdict, Mapping):
        return {}
    counts: dict[str, int] = {}
    winner, error = verdict.get("winner"), verdict.get("error")
    if winner in ("candidate", "tie", "control"):
        counts[winner] = 1
    elif error in ("unparsable", "no_winner"):
        counts["unparsed"] = 1
    elif error == "budget":
        counts["budget"] = 1
    else:
        counts["failed"] = 1
    said = verdict.get("judge_winner")
    if said in ("A", "B") and winner in ("candidate", "control"):
        counts["decisive"] = 1
        counts["first"] = int(said == "A")
        control_chars = comparison.get("control_chars")
        candidate_chars = comparison.get("candidate_chars")
        if isinstance(control_chars, int) and isinstance(candidate_chars, int):
            if control_chars != candidate_chars:
                counts["length_decisive"] = 1
                counts["longer"] = int((winner == "candidate") == (candidate_chars > control_chars))
    return counts
