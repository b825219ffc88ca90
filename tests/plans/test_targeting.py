"""A plan's targeting through its services (plans/targeting.py) and into the snapshot:
rules refused whole when one cannot be evaluated (naming it, nothing written), changes
while running (version, audit, routing change), overrides and their bounds, cohort weights
and the stage a cohort-first step compares."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from turnout.contract import MAX_RULES

from migrations_app.errors import ValidationFailed
from migrations_app.models import AuditEvent, MigrationPlan, TargetingRule, UnitOverride
from migrations_app.plans import lifecycle
from migrations_app.plans import targeting as plan_targeting
from migrations_app.routing import changes
from migrations_app.routing.snapshots import plan_entry
from tests.factories import make_plan, person, started_plan

# Real commits: a routing change is recorded once per transaction, as in production.
pytestmark = pytest.mark.django_db(transaction=True)

EXCLUDE_BANKS = {
    "name": "regulated",
    "when": [{"attribute": "tenant", "op": "in", "values": ["bank"]}],
    "then": "exclude",
}
STAFF = {
    "name": "staff",
    "when": [{"attribute": "internal", "op": "equals", "value": True}],
    "then": "cohort",
    "cohort": "internal",
}
COHORT_FIRST = [
    {
        "kind": "rollout",
        "percent": None,
        "steps": [{"cohort": "internal", "percent": 100}, 5, 100],
        "min_duration_minutes": 0,
        "min_samples": 0,
    }
]


def entry(key: str) -> dict[str, Any]:
    return plan_entry(MigrationPlan.objects.get(key=key))


@pytest.mark.parametrize(
    ("rules", "field", "words"),
    [
        ([EXCLUDE_BANKS, {"name": "typo", "when": [{"attribute": "t", "op": "equal", "value": 1}], "then": "exclude"}],
         "rules[1].when.0.op", "rule 2 (\"typo\"): condition 1: unknown operator 'equal'"),
        ([{"name": "re", "when": [{"attribute": "t", "op": "regex", "value": "(unclosed"}], "then": "exclude"}],
         "rules[0].when.0.value", 'rule 1 ("re"): condition 1: the pattern does not compile'),
        ([{"name": "long", "when": [{"attribute": "t", "op": "regex", "value": "x" * 300}], "then": "exclude"}],
         "rules[0].when.0.value", "over 256"),
        ([EXCLUDE_BANKS] * (MAX_RULES + 1), "rules", f"over the cap of {MAX_RULES}"),
    ],
)  # fmt: skip
def test_rules_that_cannot_be_evaluated_are_refused_naming_the_rule(
    rules: list[Any], field: str, words: str
) -> None:
    plan = started_plan("chat")
    sequence = changes.current_sequence()
    with pytest.raises(ValidationFailed) as refused:
        plan_targeting.rules_replace(plan_key="chat", rules=rules, actor=person())
    fields = refused.value.details["fields"]
    assert field in fields and words in fields[field][0], fields
    # nothing written: no rule, no version, no audit event, no routing change
    assert not TargetingRule.objects.exists()
    assert MigrationPlan.objects.get(pk=plan.pk).version == plan.version
    assert not AuditEvent.objects.filter(action="targeting").exists()
    assert changes.current_sequence() == sequence


def test_rules_change_while_running_audited_and_published() -> None:
    plan = started_plan("chat", advances=1)
    sequence = changes.current_sequence()
    plan_targeting.rules_replace(
        plan_key="chat", rules=[EXCLUDE_BANKS, STAFF], actor=person(), reason="contract"
    )
    after = MigrationPlan.objects.get(pk=plan.pk)
    assert after.version == plan.version + 1 and after.status == "running"
    event = AuditEvent.objects.get(action="targeting")
    assert event.plan_version == after.version and event.reason == "contract"
    assert event.stage_id == plan.current_stage_id  # the split goes on: same stage
    assert changes.current_sequence() > sequence
    assert entry("chat")["rules"] == [EXCLUDE_BANKS, STAFF]
    # the engine's way in: one rule inserted first, the others kept in order
    plan_targeting.rule_add(
        plan_key="chat",
        rule={"name": "segment lang=ja", "when": [{"attribute": "lang", "op": "equals", "value": "ja"}], "then": "exclude"},
        actor=lifecycle.ENGINE,
        reason="regressed segment",
    )  # fmt: skip
    assert [r["name"] for r in entry("chat")["rules"]] == ["segment lang=ja", "regulated", "staff"]


def test_a_plan_without_targeting_reads_as_before() -> None:
    started_plan("chat")
    assert not {"rules", "cohorts", "overrides"} & set(entry("chat"))


def test_overrides_are_bounded_and_in_the_snapshot_only_while_running_and_live() -> None:
    make_plan("chat")
    now = timezone.now()
    bad = [
        ({"unit": "", "arm": "candidate", "expires_at": now + timedelta(hours=1)}, "unit"),
        ({"unit": "u" * 257, "arm": "candidate", "expires_at": now + timedelta(hours=1)}, "unit"),
        ({"unit": "u\x00", "arm": "candidate", "expires_at": now + timedelta(hours=1)}, "unit"),
        ({"unit": "qa", "arm": "shadow", "expires_at": now + timedelta(hours=1)}, "arm"),
        (
            {"unit": "qa", "arm": "candidate", "expires_at": now - timedelta(seconds=1)},
            "expires_at",
        ),
        ({"unit": "qa", "arm": "candidate", "expires_at": now + timedelta(days=91)}, "expires_at"),
    ]
    for values, field in bad:
        with pytest.raises(ValidationFailed) as refused:
            plan_targeting.override_set(plan_key="chat", actor=person(), **values)
        assert field in refused.value.details["fields"]
    assert not UnitOverride.objects.exists()
    plan_targeting.override_set(
        plan_key="chat", unit="qa-1", arm="candidate", expires_at=now + timedelta(hours=1),
        actor=person(), reason="QA-12",
    )  # fmt: skip
    assert "overrides" not in entry("chat")  # a draft: overrides apply while running only
    lifecycle.plan_start(plan_key="chat", actor=person())
    ((unit, override),) = entry("chat")["overrides"].items()
    assert unit == "qa-1" and override["arm"] == "candidate"
    assert abs(override["expires"] - (now + timedelta(hours=1)).timestamp()) < 1
    UnitOverride.objects.update(expires_at=now - timedelta(seconds=1))
    assert "overrides" not in entry("chat")
    assert plan_targeting.override_remove(plan_key="chat", unit="qa-1", actor=person())
    assert not plan_targeting.override_remove(plan_key="chat", unit="qa-1", actor=person())
    assert AuditEvent.objects.filter(action="override").count() == 2


def test_the_override_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_targeting, "MAX_OVERRIDES", 2)
    started_plan("chat")
    later = timezone.now() + timedelta(hours=1)
    for unit in ("a", "b"):
        plan_targeting.override_set(
            plan_key="chat", unit=unit, arm="candidate", expires_at=later, actor=person()
        )
    plan_targeting.override_set(
        plan_key="chat", unit="a", arm="control", expires_at=later, actor=person()
    )
    with pytest.raises(ValidationFailed, match="the most a plan may have"):
        plan_targeting.override_set(
            plan_key="chat", unit="c", arm="candidate", expires_at=later, actor=person()
        )
    # expired ones do not count
    UnitOverride.objects.filter(unit="b").update(expires_at=timezone.now() - timedelta(seconds=1))
    plan_targeting.override_set(
        plan_key="chat", unit="c", arm="candidate", expires_at=later, actor=person()
    )
    assert sorted(UnitOverride.objects.values_list("unit", flat=True)) == ["a", "c"]


def test_a_cohort_first_step_compares_its_cohort_at_its_weight() -> None:
    plan = started_plan("chat", phases=COHORT_FIRST)
    plan_targeting.rules_replace(plan_key="chat", rules=[STAFF], actor=person())
    stage = MigrationPlan.objects.get(pk=plan.pk).current_stage
    assert (stage.cohort, stage.weight_bp) == ("internal", 10_000)
    data = entry("chat")
    assert (data["weight_bp"], data["cohorts"]) == (0, {"internal": 10_000})
    lifecycle.plan_advance(plan_key="chat", actor=person())
    stage = MigrationPlan.objects.select_related("current_stage").get(pk=plan.pk).current_stage
    assert (stage.cohort, stage.weight_bp) == ("", 500)
    data = entry("chat")
    assert (data["weight_bp"], data["cohorts"]) == (500, {"internal": 10_000})
