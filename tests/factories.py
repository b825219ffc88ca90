"""Test data built through the services, as a person or the engine would build it."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth import get_user_model

from migrations_app.models import MigrationPlan
from migrations_app.plans import edits, lifecycle

_counter = itertools.count(1)


def make_user(username: str = "alice", *, superuser: bool = True) -> Any:
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None:
        create = (
            user_model.objects.create_superuser if superuser else user_model.objects.create_user
        )
        user = create(username=username, email=f"{username}@example.com", password="pw-" + username)
    return user


def make_plan(key: str | None = None, **overrides: Any) -> MigrationPlan:
    """A draft plan on the seeded catalog: GPT-4o → Claude Sonnet 4, standard playbook."""
    user = overrides.pop("owner", None) or make_user()
    kwargs: dict[str, Any] = {
        "key": key or f"plan-{next(_counter)}",
        "name": "Test plan",
        "control": {"model": "openai:gpt-4o-2024-08-06", "params": {"temperature": 0.2}},
        "candidate": {
            "model": "anthropic:claude-sonnet-4-20250514",
            "params": {"temperature": 0.2},
        },
        "owner": user,
        "actor": lifecycle.Actor.for_user(user),
    }
    kwargs.update(overrides)
    return edits.plan_create(**kwargs)


def person(username: str = "alice") -> lifecycle.Actor:
    return lifecycle.Actor.for_user(make_user(username))


def started_plan(key: str | None = None, *, advances: int = 0, **overrides: Any) -> MigrationPlan:
    """A plan made by :func:`make_plan` (``overrides`` go there) and started by a person: run 1,
    its first phase (the standard playbook's shadow), then advanced ``advances`` times (once:
    the A/B split). Read back fresh, with its run and stage."""
    plan = make_plan(key, **overrides)
    lifecycle.plan_start(plan_key=plan.key, actor=person())
    for _ in range(advances):
        lifecycle.plan_advance(plan_key=plan.key, actor=person())
    return MigrationPlan.objects.select_related("current_run", "current_stage").get(pk=plan.pk)


def formset(prefix: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """POST data of a Django formset named ``prefix`` holding ``rows`` (all new rows): its
    management form and each row's fields (a None field is left out, as a browser would)."""
    data: dict[str, Any] = {
        f"{prefix}-TOTAL_FORMS": len(rows),
        f"{prefix}-INITIAL_FORMS": 0,
        f"{prefix}-MIN_NUM_FORMS": 0,
        f"{prefix}-MAX_NUM_FORMS": 1000,
    }
    for i, row in enumerate(rows):
        data.update({f"{prefix}-{i}-{k}": v for k, v in row.items() if v is not None})
    return data
