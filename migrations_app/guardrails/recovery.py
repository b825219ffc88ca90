"""After a rollback: is the control arm back to its baseline? An operational check over plain
data (no ORM, no clock) that the engine's recovery watch resolves its pages on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from migrations_app.guardrails import stats
from migrations_app.guardrails.stats import ArmAggregates

RecoveryStatus = Literal["recovered", "not_recovered", "waiting"]


@dataclass(frozen=True, slots=True)
class Recovery:
    """Whether the control arm is back to its baseline after a rollback."""

    status: RecoveryStatus
    summary: str


def recovery_check(
    baseline: ArmAggregates,
    recent: ArmAggregates,
    *,
    min_requests: int = 50,
    error_factor: float = 1.5,
    error_slack: float = 0.01,
    latency_factor: float = 1.3,
) -> Recovery:
    """Compare the control arm's recent traffic with its level before the rollback.

    Not a sequential test: an operational check that pages resolve on. Recovered when the
    recent error rate is at most ``error_factor`` times the baseline's (or the baseline plus
    ``error_slack``, for tiny baselines) and the recent p95 latency at most
    ``latency_factor`` times the baseline's. A rollback that did not bring these back means
    the problem was not (only) the candidate: a vendor outage, a bad deploy, load.
    """
    if recent.requests < min_requests:
        return Recovery(
            "waiting",
            f"{recent.requests} control requests since the rollback; the check needs {min_requests}",
        )
    problems: list[str] = []
    base_rate = baseline.errors / baseline.requests if baseline.requests else 0.0
    rate = recent.errors / recent.requests
    limit = max(base_rate * error_factor, base_rate + error_slack)
    if rate > limit:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(recent.errors_by_kind.items()))
        problems.append(
            f"control error rate {rate:.1%} (baseline {base_rate:.1%}; {kinds or 'no kinds'})"
        )
    if baseline.latency.total >= min_requests and recent.latency.total >= min_requests:
        base_p95 = stats.quantile_interval(baseline.latency, 0.95, 0.05)[0]
        p95 = stats.quantile_interval(recent.latency, 0.95, 0.05)[0]
        if p95 > base_p95 * latency_factor:
            problems.append(f"control p95 latency {p95:.0f} ms (baseline {base_p95:.0f} ms)")
    if problems:
        return Recovery("not_recovered", "; ".join(problems))
    return Recovery(
        "recovered",
        f"control is back to its baseline: error rate {rate:.1%} (baseline {base_rate:.1%}) "
        f"over {recent.requests} requests",
    )
