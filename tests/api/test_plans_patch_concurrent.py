"""A merge patch is applied to the plan as it is when the patch is written, not as it was when
the request read it: a PATCH naming one field never writes back another actor's field that
changed in between (a lost update)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from migrations_app.api import plans as plans_api
from migrations_app.api.keys import apikey_create
from migrations_app.models import MigrationPlan
from migrations_app.plans import edits, lifecycle
from tests.factories import make_plan

pytestmark = pytest.mark.django_db


def test_a_patch_keeps_a_field_another_actor_changed_after_it_read_the_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = make_plan("chat")
    assert plan.segment_on_regression == "rollback"
    _, raw = apikey_create(name="ci", scopes=["plans"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    read = plans_api.plan_document
    calls: list[int] = []

    def read_then_another_actor_edits(p: MigrationPlan) -> dict[str, Any]:
        document = read(p)
        if not calls:  # the PATCH has read the plan; another actor's edit lands now
            calls.append(1)
            edits.plan_apply(
                key="chat",
                values=plans_api.plan_values(
                    plans_api._document({**document, "segment_on_regression": "exclude"})
                ),
                actor=lifecycle.Actor.for_api_key("other"),
            )
        return document

    monkeypatch.setattr(plans_api, "plan_document", read_then_another_actor_edits)
    response = client.patch("/api/v1/plans/chat", {"alpha": 0.02}, content_type="application/json")
    assert response.status_code == 200, response.content
    assert [c["path"] for c in response.json()["changes"]] == ["alpha"]
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.alpha, after.segment_on_regression) == (0.02, "exclude")
    assert after.version == plan.version + 2
