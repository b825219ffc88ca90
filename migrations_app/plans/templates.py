"""Templates: reusable playbooks (phases, steps, minimums) and guardrail sets, and the seed.

A plan names a template when it is made (``template: standard-chat``) and gets a copy of its
phases and guardrails: the plan owns its rows, so editing a template later changes no plan.
The default guardrail set applies to every new plan that names no guardrails, unless the plan
removes it (``guardrails: []``), as LaunchDarkly's default guarded metrics do.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from migrations_app.models import GuardrailSet, PlanTemplate
from migrations_app.plans.phases import STANDARD_GUARDRAILS, STANDARD_PLAYBOOK

DEFAULT_SET = "standard"

_PHASE_NAMES = {"shadow": "shadow", "ab_split": "A/B split", "rollout": "rollout"}


def _minutes_text(minutes: int) -> str:
    if minutes and minutes % 1440 == 0:
        days = minutes // 1440
        return f"{days} day{'s' if days > 1 else ''}"
    return f"{minutes // 60} h" if minutes and minutes % 60 == 0 else f"{minutes} min"


def playbook_text(phases: list[dict[str, Any]], *, detail: bool = True) -> str:
    """What ``phases`` do, in words, e.g. "shadow 10 % → A/B split 10 % → rollout 10/25/50/100 %"
    (``detail``: with each phase's minimum duration and samples). Descriptions say it through
    this, never as a literal, so they cannot drift from the phases they describe."""
    said = []
    for phase in phases:
        name = _PHASE_NAMES.get(phase["kind"], phase["kind"])
        if phase["kind"] == "rollout":
            share = "/".join(f"{step:g}" for step in phase["steps"])
        else:
            share = f"{phase['percent']:g}"
        text = f"{name} {share} %"
        if detail:
            samples = {
                "shadow": "pairs",
                "ab_split": "requests per arm",
                "rollout": "requests per arm at each step",
            }.get(phase["kind"], "samples")
            minutes = _minutes_text(int(phase.get("min_duration_minutes") or 0))
            text += f" ({minutes}, {int(phase.get('min_samples') or 0):,} {samples})"
        said.append(text)
    return " → ".join(said)


SEED_GUARDRAIL_SETS: list[dict[str, Any]] = [
    {
        "name": DEFAULT_SET,
        "description": "Roll back on error rate (1.5x) and p95 latency (1.3x) regressions and a "
        "satisfaction drop of 0.1; alert when cost per request grows 1.2x.",
        "guardrails": STANDARD_GUARDRAILS,
        "is_default": True,
    },
    {
        "name": "strict",
        "description": "Tighter tolerances for user-facing flows: errors 1.2x, p95 and p99 "
        "latency 1.2x, satisfaction 0.05, cost 1.1x (pause).",
        "guardrails": [
            {
                "metric": "error_rate",
                "tolerance_kind": "relative",
                "tolerance": 1.2,
                "action": "rollback",
                "min_samples": 0,
            },
            {
                "metric": "latency_p95",
                "tolerance_kind": "relative",
                "tolerance": 1.2,
                "action": "rollback",
                "min_samples": 0,
            },
            {
                "metric": "latency_p99",
                "tolerance_kind": "relative",
                "tolerance": 1.2,
                "action": "rollback",
                "min_samples": 0,
            },
            {
                "metric": "satisfaction",
                "tolerance_kind": "absolute",
                "tolerance": 0.05,
                "action": "rollback",
                "min_samples": 0,
            },
            {
                "metric": "cost_per_request",
                "tolerance_kind": "relative",
                "tolerance": 1.1,
                "action": "pause",
                "min_samples": 0,
            },
        ],  # fmt: skip
        "is_default": False,
    },
]

SEED_TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "standard-chat",
        "description": f"The standard playbook: {playbook_text(STANDARD_PLAYBOOK)}.",
        "phases": STANDARD_PLAYBOOK,
        "guardrail_set": DEFAULT_SET,
    },
    {
        "name": "careful",
        "description": "For high-stakes traffic: shadow 20 % for a day, A/B split 5 % for a "
        "day, then a rollout 5 -> 10 -> 25 -> 50 -> 100 % where a person approves each step.",
        "phases": [
            {
                "kind": "shadow",
                "percent": 20.0,
                "steps": [],
                "min_duration_minutes": 1440,
                "min_samples": 2000,
                "auto_advance": True,
            },
            {
                "kind": "ab_split",
                "percent": 5.0,
                "steps": [],
                "min_duration_minutes": 1440,
                "min_samples": 5000,
                "auto_advance": False,
            },
            {
                "kind": "rollout",
                "percent": None,
                "steps": [5, 10, 25, 50, 100],
                "min_duration_minutes": 120,
                "min_samples": 2000,
                "auto_advance": False,
            },
        ],  # fmt: skip
        "guardrail_set": "strict",
    },
    {
        "name": "shadow-only",
        "description": "Evaluate only: the candidate answers copies of 10 % of requests for "
        "a day; users never see it. Complete it, then plan the move.",
        "phases": [
            {
                "kind": "shadow",
                "percent": 10.0,
                "steps": [],
                "min_duration_minutes": 1440,
                "min_samples": 1000,
                "auto_advance": False,
            },
        ],  # fmt: skip
        "guardrail_set": None,
    },
]


def seed_templates(set_model: Any = GuardrailSet, template_model: Any = PlanTemplate) -> None:
    """Create the seeded sets and templates that are missing (never overwrites an edited one).
    Takes the models so that a schema migration can pass its historical ones."""
    with transaction.atomic():
        sets = {}
        for row in SEED_GUARDRAIL_SETS:
            defaults = {k: v for k, v in row.items() if k != "name"}
            if row["is_default"] and set_model.objects.filter(is_default=True).exists():
                defaults["is_default"] = False  # the operator chose another default
            sets[row["name"]], _ = set_model.objects.get_or_create(
                name=row["name"], defaults=defaults
            )
        for row in SEED_TEMPLATES:
            template_model.objects.get_or_create(
                name=row["name"],
                defaults={
                    "description": row["description"],
                    "phases": row["phases"],
                    "guardrail_set": sets.get(row["guardrail_set"]),
                },
            )


def template_named(name: str) -> PlanTemplate | None:
    return PlanTemplate.objects.select_related("guardrail_set").filter(name=name).first()


def guardrail_set_named(name: str) -> GuardrailSet | None:
    return GuardrailSet.objects.filter(name=name).first()


def default_guardrail_set() -> GuardrailSet | None:
    return GuardrailSet.objects.filter(is_default=True).first()


def starting_rows(template: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The phases and guardrails a new plan's form starts from: the named template's (and its
    guardrail set, else the default set), or the standard playbook and the default set."""
    chosen = template_named(template) if template else None
    phases = list(chosen.phases) if chosen else list(STANDARD_PLAYBOOK)
    guardrail_set = chosen.guardrail_set if chosen and chosen.guardrail_set else None
    guardrail_set = guardrail_set or default_guardrail_set()
    return {"phases": phases, "guardrails": list(guardrail_set.guardrails) if guardrail_set else []}
