"""The routing snapshot SDKs evaluate locally, and the server's own cached copy of it.

The snapshot is built from the database once per routing change (the routing sequence moves
on every change: migrations_app/routing/changes.py), then served from memory: the config endpoint,
/decide, OFREP and the change streams never query the database on the hot path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Prefetch
from django.utils import timezone
from turnout import routing

from migrations_app import secret_policy
from migrations_app.models import (
    MigrationPlan,
    ModelSpec,
    PhaseKind,
    PlanStatus,
    TargetingRule,
    UnitOverride,
)
from migrations_app.plans.holdout import with_holdout
from migrations_app.plans.phases import PhaseRule, position, steps_of
from migrations_app.routing import changes

SCHEMA = 1
log = logging.getLogger(__name__)


def _arm(
    model: ModelSpec, params: dict[str, Any], prompt_mode: str, prompt_text: str
) -> dict[str, Any]:
    provider = model.provider
    kind, base_url, api_key_env = provider.kind, provider.base_url, provider.api_key_env
    if problems := secret_policy.connection_problems(api_key_env=api_key_env, base_url=base_url):
        # Saved before the rule, or before the operator narrowed it: every SDK would send the
        # variable's value to that URL. Its arm reaches them as one no adapter serves.
        log.warning("provider %s refused: %s", provider.name, secret_policy.summary(problems))
        kind, base_url, api_key_env = secret_policy.REFUSED_KIND, "", ""
    return {
        "provider": provider.name,
        "kind": kind,
        "base_url": base_url,
        "api_key_env": api_key_env,
        "model": model.model_id,
        "params": params,
        "prompt": {"mode": prompt_mode, "text": prompt_text},
        # complete() sends a prompt longer than the candidate's window to control.
        "context_window": model.context_window,
    }


def arm_spec(
    model: ModelSpec, params: dict[str, Any], prompt_mode: str, prompt_text: str
) -> routing.ArmSpec:
    """An arm as the SDKs parse it from the snapshot: what the server's own workers call."""
    return routing.parse_arm(_arm(model, params, prompt_mode, prompt_text))


def _targeting(plan: MigrationPlan, running: bool) -> dict[str, Any]:
    """The plan's rules, and its overrides while it runs (docs/contracts.md, "Targeting");
    nothing for a plan without them, so its entry reads as before targeting existed."""
    entry: dict[str, Any] = {}
    rules = [rule_entry(r) for r in plan.targeting_rules.all()]
    if rules:
        entry["rules"] = rules
    now = timezone.now()
    overrides = {
        o.unit: {"arm": o.arm, "expires": o.expires_at.timestamp()}
        for o in (plan.overrides.all() if running else ())
        if o.expires_at > now
    }
    if overrides:
        entry["overrides"] = overrides
    return entry


def rule_entry(rule: TargetingRule) -> dict[str, Any]:
    """A stored rule as the snapshot carries it (and ``turnout.targeting`` compiles it)."""
    data: dict[str, Any] = {"name": rule.name, "when": rule.conditions, "then": rule.result}
    if rule.cohort:
        data["cohort"] = rule.cohort
    return data


def plan_entry(plan: MigrationPlan, *, as_running: bool = False) -> dict[str, Any]:
    """One plan as SDKs see it (docs/contracts.md); ``as_running``: as it would be if it ran
    at its current step (the admin's preview of a draft or paused plan)."""
    status = plan.status
    if status == PlanStatus.ARCHIVED:
        status = plan.final_status or PlanStatus.DRAFT
    if as_running:
        status = PlanStatus.RUNNING
    phases = with_holdout(
        [PhaseRule(p.kind, p.percent, steps_of(p.steps)) for p in plan.phases.all()],
        plan.holdout_percent,
    )
    here = position(phases, plan.phase_index, plan.step_index)
    running = status == PlanStatus.RUNNING
    entry = {
        "key": plan.key,
        "version": plan.version,
        "run": plan.current_run.number if plan.current_run else 0,
        "status": status,
        "phase": here.phase if running else None,
        "phase_index": plan.phase_index,
        "step_index": plan.step_index,
        "salt": plan.salt,
        "weight_bp": here.weight_bp if running else 0,
        "shadow_bp": here.shadow_bp if running else 0,
        "fallback_to_control": plan.fallback_to_control,
        # The answer checks' JSON Schema (schema_valid), when the plan gives one.
        "answer_schema": plan.answer_schema,
        "control": _arm(
            plan.control_model,
            plan.control_params,
            plan.control_prompt_mode,
            plan.control_prompt_text,
        ),
        "candidate": _arm(
            plan.candidate_model,
            plan.candidate_params,
            plan.candidate_prompt_mode,
            plan.candidate_prompt_text,
        ),
        **_targeting(plan, running),
    }
    judge_bp = _judge_bp(plan, here.phase if running else None)
    if judge_bp:
        # The pointwise judge: the SDK sends this share of each arm's answers to
        # POST /api/v1/judge-samples (absent: none, as before the judge existed).
        entry["judge_bp"] = judge_bp
    if plan.segment_dimensions:
        # Guardrails per segment: each outcome carries its unit's values of these attributes.
        entry["segments"] = list(plan.segment_dimensions)
    if running and here.cohorts:
        # Each cohort's weight at this step; a cohort not listed is split at weight_bp.
        entry["cohorts"] = dict(here.cohorts)
    return entry


def _judge_bp(plan: MigrationPlan, phase: str | None) -> int:
    """The share of each arm's answers (basis points) the pointwise judge scores: only in a
    split or rollout phase of a running plan with a judge model (a shadow stage's pairs are
    judged there, and ingest would store a sample of any other stage as skipped)."""
    if phase not in (PhaseKind.AB_SPLIT, PhaseKind.ROLLOUT) or plan.judge_model_id is None:
        return 0
    return max(0, min(routing.BASIS_POINTS, round(plan.judge_sample_percent * 100)))


def build_snapshot(
    plan_ids: frozenset[int] | None = None, now: datetime | None = None
) -> dict[str, Any]:
    # Overrides expired by now are left out; one that expires later stays until the next
    # rebuild, and every SDK (and /decide) checks its expiry against its own clock meanwhile.
    query = (
        MigrationPlan.objects.select_related(
            "control_model__provider", "candidate_model__provider", "current_run"
        )
        .prefetch_related(
            "phases",
            "targeting_rules",
            Prefetch(
                "overrides",
                queryset=UnitOverride.objects.filter(expires_at__gt=now or timezone.now()),
            ),
        )
        .order_by("key")
    )
    if plan_ids is not None:
        query = query.filter(pk__in=plan_ids)
    entries = [plan_entry(plan) for plan in query]
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
    return {
        "schema": SCHEMA,
        "version": hashlib.sha256(canonical).hexdigest()[:32],
        "plans": entries,
    }


@dataclass(frozen=True, slots=True)
class Served:
    """A snapshot ready to serve: the JSON body, its ETag, and the parsed form routing evaluates."""

    data: dict[str, Any]
    body: bytes
    etag: str
    parsed: routing.Snapshot


_lock = threading.Lock()
# Held while building: when a change wakes every stream of a process at once, the first builds
# and the others find its result, instead of each running the same queries.
_build_lock = threading.Lock()
_served: dict[tuple[int, frozenset[int] | None], Served] = {}


def served_snapshot(plan_ids: frozenset[int] | None, sequence: int | None = None) -> Served:
    """The snapshot for a key's plans (None: every plan), rebuilt only when routing changed."""
    seq = changes.current_sequence() if sequence is None else sequence
    cache_key = (seq, plan_ids)
    served = _served.get(cache_key)
    if served is not None:
        return served
    with _build_lock:
        served = _served.get(cache_key)
        if served is not None:
            return served
        data = build_snapshot(plan_ids)
        served = Served(
            data=data,
            body=json.dumps(data, separators=(",", ":")).encode(),
            etag=f'"{data["version"]}"',
            parsed=routing.parse_snapshot(data),
        )
        with _lock:
            if any(k[0] != seq for k in _served):
                _served.clear()  # routing moved on: older sequences are never asked for again
            _served[cache_key] = served
    return served


def forget_served() -> None:
    """Drop the in-process copies (tests that change the database behind the services' back)."""
    with _lock:
        _served.clear()
