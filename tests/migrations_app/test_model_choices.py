"""A stage's kind and an audit event's action are closed sets (TextChoices): the admin and the
report show their labels, and a service cannot write an action no one knows."""

from __future__ import annotations

import pytest

from migrations_app.models import AuditAction, AuditEvent, PhaseKind, PlanStage, StageKind
from migrations_app.plans import lifecycle
from tests.factories import make_plan, person


def test_the_fields_carry_the_choices() -> None:
    assert PlanStage._meta.get_field("kind").choices == StageKind.choices
    assert AuditEvent._meta.get_field("action").choices == AuditAction.choices
    # Every phase opens stages of its own kind; a rollback opens the recovery stage and the
    # last rollout step, where the plan keeps a holdout, the holdout stage.
    assert set(PhaseKind.values) | {lifecycle.RECOVERY, StageKind.HOLDOUT} == set(StageKind.values)
    assert set(lifecycle.TRANSITIONS) <= set(AuditAction.values)


@pytest.mark.django_db
def test_an_unknown_action_is_not_audited() -> None:
    plan = make_plan()
    with pytest.raises(ValueError):
        lifecycle.record_edit(plan, actor=person(), action="renamed", reason="")
    assert not AuditEvent.objects.filter(plan=plan, action="renamed").exists()
