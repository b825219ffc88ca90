"""Test data built through the services, as a person or the engine would build it."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth import get_user_model

from migrations_app import plans
from migrations_app.models import MigrationPlan

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
        "actor": plans.Actor.for_user(user),
    }
    kwargs.update(overrides)
    return plans.plan_create(**kwargs)


def person(username: str = "alice") -> plans.Actor:
    return plans.Actor.for_user(make_user(username))
