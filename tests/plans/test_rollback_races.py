"""A rollback against a concurrent plan edit, on real PostgreSQL (review defect L1): an edit
that is not a lifecycle action (a rename) must not make a rollback that named no version
fail or vanish. Whichever commits first, the plan ends rolled back, renamed, with one
rollback in its audit trail; a rollback that named a version the rename moved fails clearly."""

from __future__ import annotations

from typing import Any

import pytest

from migrations_app.api.plan_serializers import plan_values
from migrations_app.errors import VersionConflict
from migrations_app.models import AuditEvent, MigrationPlan
from migrations_app.plans import edits, lifecycle
from migrations_app.plans.document import plan_document
from tests.factories import person, started_plan
from tests.races import first_holds_the_lock

pytestmark = pytest.mark.django_db(transaction=True)


def _rename(key: str, name: str) -> None:
    plan = MigrationPlan.objects.get(key=key)
    # As the plans API's PATCH does: the stored document with one field changed.
    values = plan_values({**plan_document(plan), "name": name})
    edits.plan_apply(key=key, values=values, actor=person("bob"))


def _rollback(key: str, **kwargs: Any) -> None:
    lifecycle.plan_rollback(plan_key=key, actor=person(), reason="p95 doubled", **kwargs)


def _rolled_back_and_renamed(plan: MigrationPlan, name: str) -> None:
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.status, after.name) == ("rolled_back", name)
    assert after.version == plan.version + 2  # one bump each, neither written over
    assert after.current_run.end_status == "rolled_back"
    assert AuditEvent.objects.filter(plan=plan, action="rollback").count() == 1
    assert AuditEvent.objects.filter(plan=plan, action="edit").count() == 1


def test_a_rollback_waiting_on_a_rename_wins() -> None:
    # Before the fix the rollback read the plan unlocked, then its compare-and-set waited on
    # the rename's row lock and matched no row once the rename committed: 409, no rollback.
    plan = started_plan("race-rename-first")
    raised = first_holds_the_lock(lambda: _rename(plan.key, "Renamed"), lambda: _rollback(plan.key))
    assert raised == {}
    _rolled_back_and_renamed(plan, "Renamed")


def test_a_rename_waiting_on_a_rollback_keeps_it() -> None:
    plan = started_plan("race-rollback-first")
    raised = first_holds_the_lock(lambda: _rollback(plan.key), lambda: _rename(plan.key, "Renamed"))
    assert raised == {}
    _rolled_back_and_renamed(plan, "Renamed")


def test_a_rollback_on_the_version_a_rename_moved_fails_clearly() -> None:
    plan = started_plan("race-named-version")
    raised = first_holds_the_lock(
        lambda: _rename(plan.key, "Renamed"),
        lambda: _rollback(plan.key, expected_version=plan.version),
    )
    conflict = raised.pop("second")
    assert raised == {} and isinstance(conflict, VersionConflict)
    assert conflict.details["version"] == plan.version + 1  # says what to retry with
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert (after.status, after.name, after.version) == ("running", "Renamed", plan.version + 1)
    assert not AuditEvent.objects.filter(plan=plan, action="rollback").exists()
    _rollback(plan.key, expected_version=conflict.details["version"])
    assert MigrationPlan.objects.get(pk=plan.pk).status == "rolled_back"


def test_the_api_rollback_waiting_on_a_rename_wins() -> None:
    """The same through POST /api/v1/plans/{key}/rollback with no expected_version."""
    from django.test import Client

    from migrations_app.api.keys import apikey_create

    plan = started_plan("race-api")
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {apikey_create(name='oncall', scopes=['admin'])[1]}"
    )
    answered: dict[str, Any] = {}

    def rollback() -> None:
        answered["response"] = client.post(
            f"/api/v1/plans/{plan.key}/rollback",
            {"reason": "p95 doubled"},
            content_type="application/json",
        )

    raised = first_holds_the_lock(lambda: _rename(plan.key, "Renamed"), rollback)
    assert raised == {}
    response = answered["response"]
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "rolled_back"
    _rolled_back_and_renamed(plan, "Renamed")
