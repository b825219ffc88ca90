"""The routing snapshot SDKs evaluate locally, and the server's own cached copy of it.

The snapshot is built from the database once per routing change (the change sequence in
Redis moves on every change), then served from memory: the config endpoint, /decide and
OFREP never query the database on the hot path.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from turnout import routing

from migrations_app import changes
from migrations_app.models import MigrationPlan, ModelSpec, PlanStatus
from migrations_app.phases import PhaseRule, position

SCHEMA = 1


def _arm(
    model: ModelSpec, params: dict[str, Any], prompt_mode: str, prompt_text: str
) -> dict[str, Any]:
    provider = model.provider
    return {
        "provider": provider.name,
        "kind": provider.kind,
        "base_url": provider.base_url,
        "api_key_env": provider.api_key_env,
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


def plan_entry(plan: MigrationPlan) -> dict[str, Any]:
    """One plan as SDKs see it (docs/contracts.md)."""
    status = plan.status
    if status == PlanStatus.ARCHIVED:
        status = plan.final_status or PlanStatus.DRAFT
    phases = [
        PhaseRule(p.kind, p.percent, tuple(float(s) for s in p.steps or []))
        for p in plan.phases.all()
    ]
    here = position(phases, plan.phase_index, plan.step_index)
    running = status == PlanStatus.RUNNING
    return {
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
    }


def build_snapshot(plan_ids: frozenset[int] | None = None) -> dict[str, Any]:
    query = (
        MigrationPlan.objects.select_related(
            "control_model__provider", "candidate_model__provider", "current_run"
        )
        .prefetch_related("phases")
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
_served: dict[tuple[int, frozenset[int] | None], Served] = {}


def served_snapshot(plan_ids: frozenset[int] | None, sequence: int | None = None) -> Served:
    """The snapshot for a key's plans (None: every plan), rebuilt only when routing changed."""
    seq = changes.current_sequence() if sequence is None else sequence
    cache_key = (seq, plan_ids)
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
