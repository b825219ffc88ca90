"""What the engine says to on-call: an :class:`~migrations_app.alerts.message.AlertMessage`
built from an evaluation's evidence (pure: no ORM, no clock).

One page per problem: the dedup key is the plan run plus the guardrail that fired (or the
reason when none did: the circuit breaker, a sample-ratio mismatch), so a warning repeated
every 15 s, its escalation and its resolution all fold into one incident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from migrations_app.alerts.message import AlertMessage, ExamplePair, GuardrailVerdict, dedup_key

# engine action -> (alert event, severity)
EVENTS: dict[str, tuple[str, str]] = {
    "rollback": ("rolled_back", "critical"),
    "pause": ("paused", "error"),
    "alert": ("warning", "warning"),
    "hold": ("cannot_evaluate", "warning"),
    "escalated": ("escalated", "critical"),
    "recovered": ("recovered", "info"),
}
_ACTIONS = {
    "rollback": "Rolled all traffic back to control",
    "pause": "Paused the plan: all traffic on control until someone resumes it",
    "alert": "Alerted only; traffic unchanged",
    "hold": "Holding the plan at its current step",
    "escalated": "Escalated: control has not recovered since the rollback",
    "recovered": "Resolved: control is back to its baseline",
}


def subject(evidence: Mapping[str, Any]) -> str:
    """What the page is about: the guardrail whose ask was the action taken (a rollback is
    about the guardrail that regressed, not an earlier one that only warned), or the reason."""
    guardrails = evidence.get("guardrails", [])
    for wanted in ("rollback", "pause", "alert"):
        for guardrail in guardrails:
            if guardrail.get("wants") == wanted:
                return str(guardrail["metric"])
        if wanted == "rollback" and evidence.get("circuit_breaker"):
            return "circuit_breaker"
    ratio = evidence.get("sample_ratio") or {}
    if ratio.get("mismatch"):
        return "sample_ratio"
    return "plan"


def _verdict(evidence: Mapping[str, Any], metric: str) -> GuardrailVerdict | None:
    for guardrail in evidence.get("guardrails", []):
        if guardrail["metric"] == metric:
            v = guardrail["verdict"]
            change = guardrail.get("change") or {}
            return GuardrailVerdict(
                metric=metric,
                estimate=v["estimate"],
                lower=v["lower"],
                upper=v["upper"],
                tolerance=v["tolerance"],
                tolerance_kind=v["tolerance_kind"],
                n_control=v["n_control"],
                n_candidate=v["n_candidate"],
                alpha=v["alpha"],
                summary=v["summary"],
                changed_since=(change.get("since") or None) if change.get("fired") else None,
            )
    return None


def alert_message(
    *,
    action: str,
    plan_key: str,
    plan_name: str,
    run: int,
    control_model: str,
    candidate_model: str,
    evidence: Mapping[str, Any],
    reason: str,
    at: datetime,
    dashboard_url: str,
    about: str | None = None,
    examples: Sequence[ExamplePair] = (),
) -> AlertMessage:
    """The page for an engine action (``rollback``, ``pause``, ``alert``, ``hold`` when it
    cannot evaluate, ``escalated``, ``recovered``). ``about`` is the incident's subject when
    the caller knows it (recovery and escalation reuse the rollback's)."""
    event, severity = EVENTS[action]
    topic = about or subject(evidence)
    # Segments the engine excluded (the run goes on: an alert) are news of their own: that
    # page must not fold into an earlier warning on the same guardrail (the outbox folds
    # repeats of a dedup key), or on-call never hears which segment left. A rollback stays
    # the guardrail's incident, which its recovery and escalation pages join.
    excluded = evidence.get("excluded") or () if action == "alert" else ()
    incident = topic + "".join(f":excluded:{e['dimension']}={e['value']}" for e in excluded)
    arms = evidence.get("arms", {})
    return AlertMessage(
        plan_key=plan_key,
        plan_name=plan_name,
        run=run,
        event=event,
        severity=severity,
        action_taken=_ACTIONS[action],
        acted_at=at.isoformat(),
        dedup_key=dedup_key(plan_key, run, incident),
        dashboard_url=dashboard_url,
        reason=reason,
        control_model=control_model,
        candidate_model=candidate_model,
        guardrail=_verdict(evidence, topic),
        error_kinds_control=arms.get("control", {}).get("errors_by_kind", {}),
        error_kinds_candidate=arms.get("candidate", {}).get("errors_by_kind", {}),
        examples=tuple(examples),
        resolve=action == "recovered",
    )
