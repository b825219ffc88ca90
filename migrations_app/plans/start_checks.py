"""What will not work once a plan starts, said before it does.

One computation for every path that starts a plan: the admin's and the dashboard's
confirmation pages list the findings, the API answers 409 with them, and ``plan_start``
checks again inside its transaction. A *problem* makes the plan impossible to run and is
refused whoever asks; a *warning* is something a person may accept (the start then records
what was accepted in its audit event).

``evaluate`` is pure over ``StartFacts``; ``start_facts`` reads them (database, this
process's environment, the secret policy), and ``start_checks`` is the two together.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from migrations_app import secret_policy
from migrations_app.errors import DomainError
from migrations_app.guardrails.rules import NOT_IN_SHADOW
from migrations_app.models import ApiKey, ApiKeyScope, Dataset, MigrationPlan, ModelSpec
from migrations_app.plans.phases import PhaseRule, candidate_share_drops, validate_phase
from migrations_app.plans.selectors import phase_rules_of

# Problems: the plan cannot run as saved.
NO_PHASES = "no_phases"
INVALID_PHASE = "invalid_phase"
SHARE_DROPS = "candidate_share_drops"
PROVIDER_REFUSED = "provider_refused"
# Warnings: it runs, but something the person expects will not happen.
NO_ALERT_CHANNEL = "no_alert_channel"
PROVIDER_KEY_UNSET = "provider_key_unset"
NO_API_KEY = "no_api_key"
SHADOW_WITHOUT_JUDGE = "shadow_without_judge"
NO_GUARDRAIL = "no_guardrail"


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class StartChecks:
    problems: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()

    @property
    def warning_codes(self) -> list[str]:
        """The codes a person acknowledges (one per kind of warning)."""
        return sorted({w.code for w in self.warnings})

    def unacknowledged(self, acknowledged: Collection[str]) -> tuple[Finding, ...]:
        return tuple(w for w in self.warnings if w.code not in acknowledged)

    def to_dict(self) -> dict[str, Any]:
        return {
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
        }


@dataclass(frozen=True, slots=True)
class Connection:
    """A provider connection one of the plan's models is reached through."""

    role: str  # "control", "candidate" or "judge"
    provider: str
    api_key_env: str
    key_set: bool  # the variable has a value in this process
    refused: str  # why the secret policy refuses the connection; empty: allowed


@dataclass(frozen=True, slots=True)
class StartFacts:
    """What the checks need to know about a plan, as plain data."""

    phases: tuple[PhaseRule, ...]
    phase_errors: tuple[str, ...]
    guardrail_metrics: tuple[str, ...]
    has_judge: bool
    alert_channels: tuple[tuple[str, bool], ...]  # (name, enabled)
    connections: tuple[Connection, ...]
    decide_keys: int  # live API keys with the decide scope that see the plan
    # (name, why) for each enabled channel that cannot deliver (AlertChannel.delivery_problems)
    broken_channels: tuple[tuple[str, str], ...] = ()


def _problems(facts: StartFacts) -> list[Finding]:
    found: list[Finding] = []
    if not facts.phases:
        found.append(Finding(NO_PHASES, "The plan has no phases: add at least one."))
    found += [Finding(INVALID_PHASE, message) for message in facts.phase_errors]
    if not facts.phase_errors:
        found += [Finding(SHARE_DROPS, m) for m in candidate_share_drops(facts.phases)]
    for c in facts.connections:
        if c.refused and c.role in ("control", "candidate"):
            found.append(
                Finding(
                    PROVIDER_REFUSED,
                    f"The {c.role}'s provider connection {c.provider!r} is refused by the "
                    f"secret policy ({c.refused}): no call to it would be made.",
                )
            )
    return found


def _warnings(facts: StartFacts) -> list[Finding]:
    found: list[Finding] = []
    broken = dict(facts.broken_channels)
    working = [name for name, on in facts.alert_channels if on and name not in broken]
    if not working:
        disabled = [name for name, on in facts.alert_channels if not on]
        why = [f"its channels {', '.join(disabled)} are disabled"] if disabled else []
        why += [f"{name} cannot deliver ({problem})" for name, problem in broken.items()]
        because = f" ({'; '.join(why)})" if why else ""
        found.append(
            Finding(
                NO_ALERT_CHANNEL,
                f"No working alert channel{because}: a rollback would page nobody.",
            )
        )
    if not facts.guardrail_metrics:
        found.append(
            Finding(NO_GUARDRAIL, "No guardrail: the engine will never roll this plan back.")
        )
    shadow = any(p.kind == "shadow" for p in facts.phases)
    # Turnout's own workers call the candidate (shadow) and the judge; the control arm is
    # called only by the applications, whose environment this process cannot see.
    for c in facts.connections:
        if shadow and c.role in ("candidate", "judge") and not c.key_set and not c.refused:
            found.append(
                Finding(
                    PROVIDER_KEY_UNSET,
                    f"{c.api_key_env} is not set in this process: the shadow workers call the "
                    f"{c.role} ({c.provider}) with it, and will fail if it is unset there too.",
                )
            )
        if shadow and c.role == "judge" and c.refused:
            found.append(
                Finding(
                    PROVIDER_REFUSED,
                    f"The judge's provider connection {c.provider!r} is refused by the secret "
                    f"policy ({c.refused}): shadow pairs will not be judged.",
                )
            )
    if facts.decide_keys == 0:
        found.append(
            Finding(
                NO_API_KEY,
                "No API key with the decide scope can see this plan: no SDK will receive its "
                "routing, and every request stays on the arm the application's code defaults to.",
            )
        )
    unseen = sorted(m for m in facts.guardrail_metrics if m in NOT_IN_SHADOW)
    if shadow and unseen and not facts.has_judge:
        found.append(
            Finding(
                SHADOW_WITHOUT_JUDGE,
                f"The shadow phase has no judge model, and the {', '.join(unseen)} guardrail "
                "cannot be tested in shadow (no user sees the candidate's answers): shadow "
                "will compare errors, latency and cost only, not the answers. Choose a judge "
                "model to have each pair compared.",
            )
        )
    return found


def evaluate(facts: StartFacts) -> StartChecks:
    """The findings for a plan about to start. Pure."""
    return StartChecks(problems=tuple(_problems(facts)), warnings=tuple(_warnings(facts)))


def _connection(role: str, model: ModelSpec, environ: Mapping[str, str]) -> Connection:
    provider = model.provider
    refused = secret_policy.connection_problems(
        api_key_env=provider.api_key_env, base_url=provider.base_url
    )
    return Connection(
        role=role,
        provider=provider.name,
        api_key_env=provider.api_key_env,
        key_set=bool(environ.get(provider.api_key_env)),
        refused=secret_policy.summary(refused) if refused else "",
    )


def _replay_dataset_missing(plan: MigrationPlan, rows: list[Any]) -> list[str]:
    """A replay phase whose dataset does not exist (yet), or was made for another plan: the
    replay could not start."""
    missing = []
    for i, row in enumerate(rows):
        wanted = row.replay if row.kind == "replay" and isinstance(row.replay, dict) else {}
        name, version = wanted.get("dataset"), wanted.get("version")
        if isinstance(name, str) and name:
            # datasets.selectors.usable_by (a layer above): made for this plan or for none.
            found = Dataset.objects.filter(Q(plan_id=plan.pk) | Q(plan__isnull=True), name=name)
            if isinstance(version, int):
                found = found.filter(version=version)
            if not found.exists():
                missing.append(
                    f"Phase {i + 1} (replay): replay.dataset: no dataset {name!r}"
                    + (f" version {version}" if isinstance(version, int) else "")
                    + " for this plan (or for none): make it (upload, API, or from shadow "
                    "samples) before starting."
                )
    return missing


def _replay_gates_unjudged(plan: MigrationPlan, rows: list[Any]) -> list[str]:
    """A replay gate on the judge's preference in a plan with no judge model: no answer is
    judged, so the gate is inconclusive whatever the candidate does and the replay can never
    pass."""
    if plan.judge_model_id is not None:
        return []
    return [
        f"Phase {i + 1} (replay): replay.gates: judge_preference needs the plan's judge model: "
        "without one no answer is judged and the gate can never pass. Choose a judge model, "
        "or drop the gate."
        for i, row in enumerate(rows)
        if row.kind == "replay"
        and isinstance(row.replay, dict)
        and any(
            isinstance(g, dict) and g.get("metric") == "judge_preference"
            for g in row.replay.get("gates") or ()
        )
    ]


def start_facts(plan: MigrationPlan, environ: Mapping[str, str]) -> StartFacts:
    """Read what ``evaluate`` needs: a handful of small queries."""
    rows = list(plan.phases.all())
    phase_errors = (
        tuple(
            f"Phase {i + 1} ({row.kind}): {field}: {' '.join(messages)}"
            for i, row in enumerate(rows)
            for field, messages in validate_phase(
                {
                    "kind": row.kind,
                    "percent": row.percent,
                    "steps": row.steps,
                    "min_duration_minutes": row.min_duration_minutes,
                    "min_samples": row.min_samples,
                    "replay": row.replay,
                }
            ).items()
        )
        + tuple(_replay_dataset_missing(plan, rows))
        + tuple(_replay_gates_unjudged(plan, rows))
    )
    models = [("control", plan.control_model), ("candidate", plan.candidate_model)]
    if plan.judge_model is not None:
        models.append(("judge", plan.judge_model))
    # Scopes are a JSON list: filtered here rather than in SQL, which SQLite cannot do.
    scopes = ApiKey.objects.filter(
        Q(all_plans=True) | Q(plans=plan), revoked_at__isnull=True
    ).values_list("scopes", flat=True)
    channels = list(plan.alert_channels.order_by("name"))
    return StartFacts(
        # The listed phases (a holdout after them is checked with the plan's fields).
        phases=tuple(phase_rules_of(rows)),
        phase_errors=phase_errors,
        guardrail_metrics=tuple(plan.guardrails.values_list("metric", flat=True)),
        has_judge=plan.judge_model is not None,
        alert_channels=tuple((c.name, c.enabled) for c in channels),
        broken_channels=tuple(
            (c.name, secret_policy.summary(problems))
            for c in channels
            if c.enabled and (problems := c.delivery_problems())
        ),
        connections=tuple(_connection(role, m, environ) for role, m in models),
        decide_keys=sum(ApiKeyScope.DECIDE in s for s in scopes),
    )


def start_checks(plan: MigrationPlan, *, environ: Mapping[str, str] | None = None) -> StartChecks:
    """What will not work if ``plan`` starts now."""
    return evaluate(start_facts(plan, os.environ if environ is None else environ))


def require_startable(checks: StartChecks, *, acknowledged: Collection[str] | None) -> None:
    """Refuse a start the checks forbid: any problem (``plan_not_startable``), or a warning
    not in ``acknowledged`` (``start_warnings``; ``None``: the caller asked no person, as
    scripts and tests do, and the warnings are only recorded). Both are 409s whose details
    list the findings, and the warning codes to acknowledge."""
    if checks.problems:
        raise DomainError(
            "This plan cannot start: " + " ".join(p.message for p in checks.problems),
            code="plan_not_startable",
            status=409,
            details={"problems": [p.to_dict() for p in checks.problems]},
        )
    if acknowledged is None:
        return
    pending = checks.unacknowledged(acknowledged)
    if pending:
        raise DomainError(
            "Starting this plan needs your confirmation: " + " ".join(w.message for w in pending),
            code="start_warnings",
            status=409,
            details={
                "warnings": [w.to_dict() for w in checks.warnings],
                "acknowledge": checks.warning_codes,
            },
        )
