"""Targeting in the admin (issue 16, item 2 and 4): a plan's rules edited as an inline and
refused at save naming the rule when one cannot be evaluated, the live preview (which arm would
this unit with these attributes get?), and QA overrides listed, edited and removed through
plans/targeting.py (version bumped, audited)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from turnout import routing
from turnout.contract import MAX_RULES

from migrations_app.models import AuditEvent, MigrationPlan, TargetingRule, UnitOverride
from migrations_app.plans import targeting as plan_targeting
from migrations_app.routing.snapshots import plan_entry
from tests.admin.test_admin_races import loaded_form
from tests.factories import make_plan, person, started_plan

pytestmark = pytest.mark.django_db

STAFF = {
    "name": "staff",
    "when": [{"attribute": "internal", "op": "equals", "value": True}],
    "then": "cohort",
    "cohort": "internal",
}
BANKS = {
    "name": "regulated",
    "when": [{"attribute": "tenant", "op": "in", "values": ["bank-a"]}],
    "then": "exclude",
}


def with_rules(data: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The loaded change form with ``rules`` added as new rows after the plan's own."""
    data = dict(data)
    # The other inlines' blank extra rows left out (as if the page offered none).
    for key in [k for k in data if k.endswith("-INITIAL_FORMS")]:
        data[key.replace("INITIAL", "TOTAL")] = data[key]
    for key in [k for k in data if k.startswith("targeting_rules-") and k[16].isdigit()]:
        if int(key.split("-")[1]) >= int(data["targeting_rules-INITIAL_FORMS"][0]):
            del data[key]
    first = int(data["targeting_rules-INITIAL_FORMS"][0])
    data["targeting_rules-TOTAL_FORMS"] = str(first + len(rules))
    for i, rule in enumerate(rules, start=first):
        data[f"targeting_rules-{i}-order"] = str(rule.get("order", i))
        data[f"targeting_rules-{i}-name"] = rule.get("name", "")
        data[f"targeting_rules-{i}-conditions"] = json.dumps(rule.get("when", []))
        data[f"targeting_rules-{i}-result"] = rule["then"]
        data[f"targeting_rules-{i}-cohort"] = rule.get("cohort", "")
    return data


def errors(response: Any) -> str:
    """The form's error messages, for an assertion's message."""
    found = re.findall(
        r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S
    )
    return "; ".join(found) or response.content.decode()[:2000]


def change_url(plan: MigrationPlan) -> str:
    return reverse("admin:migrations_app_migrationplan_change", args=[plan.pk])


def test_rules_saved_from_the_plan_page_reach_the_snapshot(admin_client: Client) -> None:
    plan = make_plan("chat")
    version = plan.version
    response = admin_client.post(
        change_url(plan), with_rules(loaded_form(admin_client, plan), [BANKS, STAFF])
    )
    assert response.status_code == 302, errors(response)
    plan.refresh_from_db()
    assert plan.version == version + 1
    assert [r["name"] for r in plan_entry(plan)["rules"]] == ["regulated", "staff"]
    assert AuditEvent.objects.filter(plan=plan, action="edit").exists()


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (
            {"name": "typo", "when": [{"attribute": "t", "op": "equal", "value": 1}], "then": "exclude"},
            "rule 2 (&quot;typo&quot;): condition 1: unknown operator &#x27;equal&#x27;",
        ),
        (
            {"name": "re", "when": [{"attribute": "t", "op": "regex", "value": "(unclosed"}], "then": "exclude"},
            "rule 2 (&quot;re&quot;): condition 1: the pattern does not compile",
        ),
        (
            {"name": "long", "when": [{"attribute": "t", "op": "regex", "value": "x" * 300}], "then": "exclude"},
            "over 256",
        ),
        ({"name": "nameless", "when": [], "then": "cohort"}, "rule 2 (&quot;nameless&quot;)"),
    ],
)  # fmt: skip
def test_a_rule_that_cannot_be_evaluated_is_refused_naming_it(
    admin_client: Client, rule: dict[str, Any], words: str
) -> None:
    plan = make_plan("chat")
    version = plan.version
    response = admin_client.post(
        change_url(plan), with_rules(loaded_form(admin_client, plan), [BANKS, rule])
    )
    assert response.status_code == 200
    assert words in response.content.decode()
    plan.refresh_from_db()
    assert plan.version == version and not TargetingRule.objects.exists()


def test_a_rule_list_above_the_cap_is_refused(admin_client: Client) -> None:
    plan = make_plan("chat")
    rules = [dict(BANKS, name=f"r{i}") for i in range(MAX_RULES + 1)]
    response = admin_client.post(
        change_url(plan), with_rules(loaded_form(admin_client, plan), rules)
    )
    assert response.status_code == 200
    assert f"over the cap of {MAX_RULES}" in response.content.decode()
    assert not TargetingRule.objects.exists()


def test_rules_may_change_while_the_plan_runs(admin_client: Client) -> None:
    plan = started_plan("chat", advances=1)
    plan_targeting.rules_replace(plan_key="chat", rules=[STAFF], actor=person())
    # The regulated tenants' rule goes first: it is read before the staff cohort's.
    data = with_rules(loaded_form(admin_client, plan), [dict(BANKS, order=0)])
    data["targeting_rules-0-order"] = "1"
    response = admin_client.post(change_url(plan), data)
    assert response.status_code == 302, errors(response)
    assert list(TargetingRule.objects.values_list("name", flat=True)) == ["regulated", "staff"]


# --- the preview -----------------------------------------------------------------------------


def preview(client: Client, plan: MigrationPlan, **params: str) -> Any:
    url = reverse("admin:migrations_app_migrationplan_targeting", args=[plan.pk])
    return client.get(url, params)


def test_preview_answers_as_the_sdk_does(admin_client: Client) -> None:
    plan = started_plan("chat", advances=1)
    plan_targeting.rules_replace(plan_key="chat", rules=[BANKS, STAFF], actor=person())
    plan.refresh_from_db()
    snapshot = routing.parse_plan(plan_entry(plan))
    for unit, attributes in [
        ("u1", {"tenant": "bank-a"}),
        ("u2", {"internal": True}),
        ("u3", {"tenant": "acme", "internal": False}),
    ]:
        answer = preview(
            admin_client, plan, unit=unit, attributes=json.dumps(attributes), format="json"
        ).json()
        sdk = routing.decide(snapshot, unit, decision_id="x", attributes=attributes, now=0)
        assert (answer["now"]["arm"], answer["now"]["reason"], answer["now"]["cohort"]) == (
            sdk.arm,
            sdk.reason,
            sdk.cohort,
        )
        assert answer["bucket"] == routing.bucket(plan.salt, unit)
    excluded = preview(
        admin_client, plan, unit="u1", attributes='{"tenant": "bank-a"}', format="json"
    )
    assert excluded.json()["rule"] == 'rule 1 ("regulated")'
    assert excluded.json()["now"]["reason"] == "EXCLUDED"
    page = preview(admin_client, plan, unit="u2", attributes='{"internal": true}').content.decode()
    assert "rule 2 (&quot;staff&quot;) holds" in page and "<td>internal</td>" in page


def test_preview_of_a_draft_says_what_it_would_serve_running(admin_client: Client) -> None:
    plan = make_plan("chat")
    plan_targeting.rules_replace(plan_key="chat", rules=[STAFF], actor=person())
    answer = preview(admin_client, plan, unit="u2", attributes='{"internal": true}', format="json")
    assert answer.json()["now"]["reason"] == "DISABLED"
    assert answer.json()["running"]["cohort"] == "internal"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"unit": "", "attributes": "{}"}, "unit"),
        ({"unit": "x" * 300, "attributes": "{}"}, "unit"),
        ({"unit": "u", "attributes": "{not json"}, "attributes"),
        ({"unit": "u", "attributes": '{"tenant": {"nested": 1}}'}, "attributes.tenant"),
        ({"unit": "u", "attributes": json.dumps({f"a{i}": i for i in range(40)})}, "attributes"),
        ({"unit": "u", "attributes": json.dumps({"k" * 65: 1})}, "attributes"),
        ({"unit": "u", "attributes": "[1, 2]"}, "attributes"),
        ({"unit": "u", "attributes": json.dumps({"t": "x" * 5000})}, "attributes"),
        ({"unit": "u", "attributes": "[" * 2000 + "]" * 2000}, "attributes"),  # was a 500
    ],
)
def test_preview_refuses_what_the_api_refuses(
    admin_client: Client, params: dict[str, str], field: str
) -> None:
    plan = make_plan("chat")
    response = preview(admin_client, plan, **params, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    page = preview(admin_client, plan, **params)
    assert page.status_code == 400 and 'class="errorlist"' in page.content.decode()


def test_preview_needs_a_staff_login(client: Client) -> None:
    plan = make_plan("chat")
    response = preview(client, plan, unit="u", attributes="{}")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_plan_page_links_the_preview(admin_client: Client) -> None:
    plan = make_plan("chat")
    page = admin_client.get(change_url(plan)).content.decode()
    assert reverse("admin:migrations_app_migrationplan_targeting", args=[plan.pk]) in page


# --- QA overrides ----------------------------------------------------------------------------


def override_post(plan: MigrationPlan, **fields: Any) -> dict[str, Any]:
    expires = timezone.localtime(timezone.now() + timedelta(days=2))
    data = {
        "plan": plan.pk,
        "unit": "qa-1",
        "arm": "candidate",
        "expires_at": expires.strftime("%Y-%m-%d %H:%M:%S"),
        "reason": "QA-123",
    }
    data.update(fields)
    return data


def test_an_override_is_added_listed_and_removed_through_the_service(
    admin_client: Client,
) -> None:
    plan = started_plan("chat", advances=1)
    version = plan.version
    add = reverse("admin:migrations_app_unitoverride_add")
    response = admin_client.post(add, override_post(plan))
    assert response.status_code == 302, response.content.decode()[:3000]
    override = UnitOverride.objects.get()
    assert (override.unit, override.arm, override.created_by) == ("qa-1", "candidate", "admin")
    plan.refresh_from_db()
    assert plan.version == version + 1
    assert plan_entry(plan)["overrides"]["qa-1"]["arm"] == "candidate"
    assert AuditEvent.objects.filter(plan=plan, action="override").count() == 1
    listing = admin_client.get(reverse("admin:migrations_app_unitoverride_changelist"))
    assert "qa-1" in listing.content.decode()
    delete = reverse("admin:migrations_app_unitoverride_delete", args=[override.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not UnitOverride.objects.exists()
    plan.refresh_from_db()
    assert plan.version == version + 2 and "overrides" not in plan_entry(plan)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"arm": "both"}, "arm", "Select a valid choice"),
        ({"expires_at": "2001-01-01 00:00:00"}, "expires_at", "in the future"),
        ({"expires_at": "2099-01-01 00:00:00"}, "expires_at", "At most 90 days"),
        ({"unit": "bad\x00unit"}, "unit", "Null characters are not allowed"),
        ({"unit": "x" * 300}, "unit", "at most 256 characters"),
    ],
)  # fmt: skip
def test_a_bad_override_is_refused_by_field(
    admin_client: Client, fields: dict[str, str], field: str, words: str
) -> None:
    plan = started_plan("chat", advances=1)
    response = admin_client.post(
        reverse("admin:migrations_app_unitoverride_add"), override_post(plan, **fields)
    )
    assert response.status_code == 200
    assert words in response.content.decode()
    assert not UnitOverride.objects.exists()


# --- guardrails per segment ----------------------------------------------------------------


def test_segment_settings_are_edited_on_the_plan_page(admin_client: Client) -> None:
    plan = make_plan("chat")
    data = loaded_form(admin_client, plan)
    for key in [k for k in data if k.endswith("-INITIAL_FORMS")]:
        data[key.replace("INITIAL", "TOTAL")] = data[key]
    data.update(
        segment_dimensions='["tenant", "lang"]',
        segment_top_k="10",
        segment_on_regression="exclude",
    )
    response = admin_client.post(change_url(plan), data)
    assert response.status_code == 302, errors(response)
    plan.refresh_from_db()
    assert plan.segment_dimensions == ["tenant", "lang"]
    assert (plan.segment_top_k, plan.segment_on_regression) == (10, "exclude")
    assert plan_entry(plan)["segments"] == ["tenant", "lang"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('["a", "b", "c", "d"]', "At most 3 segment dimensions"),
        ('["tenant", "tenant"]', "Each segment dimension once"),
        ('["no spaces"]', "is not an attribute name"),
        ('"tenant"', "A list of attribute names"),
    ],
)
def test_bad_segment_dimensions_are_refused(admin_client: Client, value: str, words: str) -> None:
    plan = make_plan("chat")
    data = loaded_form(admin_client, plan)
    for key in [k for k in data if k.endswith("-INITIAL_FORMS")]:
        data[key.replace("INITIAL", "TOTAL")] = data[key]
    data["segment_dimensions"] = value
    response = admin_client.post(change_url(plan), data)
    assert response.status_code == 200
    assert words in response.content.decode()
    plan.refresh_from_db()
    assert plan.segment_dimensions == []
