"""What the descriptions say the standard playbook does is what it does (review defect L7): the
demo plan's and the seeded template's texts are derived from ``STANDARD_PLAYBOOK``."""

from __future__ import annotations

import copy
import io

import pytest
from django.core.management import call_command

from migrations_app.models import MigrationPlan, PlanTemplate
from migrations_app.plans import templates
from migrations_app.plans.phases import STANDARD_PLAYBOOK
from migrations_app.plans.templates import playbook_text


def _rollout_steps() -> str:
    (rollout,) = [p for p in STANDARD_PLAYBOOK if p["kind"] == "rollout"]
    return "/".join(f"{s:g}" for s in rollout["steps"])


def test_the_text_follows_the_phases() -> None:
    assert playbook_text(STANDARD_PLAYBOOK, detail=False) == (
        "shadow 10 % → A/B split 10 % → rollout 10/25/50/100 %"
    )
    assert playbook_text(STANDARD_PLAYBOOK) == (
        "shadow 10 % (1 h, 500 pairs) → A/B split 10 % (2 h, 2,000 requests per arm) → "
        "rollout 10/25/50/100 % (30 min, 1,000 requests per arm at each step)"
    )
    other = copy.deepcopy(STANDARD_PLAYBOOK)
    other[1]["percent"], other[2]["steps"], other[0]["min_duration_minutes"] = 2.5, [5, 100], 1440
    assert playbook_text(other, detail=False) == "shadow 10 % → A/B split 2.5 % → rollout 5/100 %"
    assert playbook_text(other).startswith("shadow 10 % (1 day, 500 pairs)")


@pytest.mark.django_db
def test_the_demo_plan_says_what_its_phases_do() -> None:
    call_command("turnout_setup", stdout=io.StringIO())
    plan = MigrationPlan.objects.get(key="support-chat")
    phases = list(plan.phases.order_by("order").values("kind", "percent", "steps"))
    assert [p["kind"] for p in phases] == [p["kind"] for p in STANDARD_PLAYBOOK]
    assert f"rollout {_rollout_steps()} %" in plan.description
    assert plan.description == (
        f"Demo plan: the standard playbook ({playbook_text(STANDARD_PLAYBOOK, detail=False)})."
    )


@pytest.mark.django_db
def test_the_standard_template_says_what_it_does() -> None:
    template = PlanTemplate.objects.get(name="standard-chat")
    assert template.phases == STANDARD_PLAYBOOK
    assert template.description == f"The standard playbook: {playbook_text(STANDARD_PLAYBOOK)}."
    seeded = next(t for t in templates.SEED_TEMPLATES if t["name"] == "standard-chat")
    assert seeded["description"] == template.description
