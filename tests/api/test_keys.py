"""API keys' plan lists: "every plan" is said explicitly; an empty list means none, so a key
limited to a plan does not see every plan once that plan is gone."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from migrations_app.api.auth import forget_keys, identify
from migrations_app.api.keys import apikey_create
from migrations_app.errors import ValidationFailed
from migrations_app.models import ApiKey, MigrationPlan
from migrations_app.routing.snapshots import forget_served
from tests.factories import make_plan

pytestmark = pytest.mark.django_db


def _config_keys(raw: str) -> list[str]:
    response = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/sdk/config")
    assert response.status_code == 200, response.content
    return [p["key"] for p in response.json()["plans"]]


def test_a_key_whose_only_plan_is_deleted_sees_no_plan() -> None:
    chat = make_plan("chat")
    make_plan("billing")
    key, raw = apikey_create(name="chat-only", scopes=["decide"], plans=[chat])
    assert _config_keys(raw) == ["chat"]
    chat.delete()
    forget_keys()
    forget_served()
    assert _config_keys(raw) == []
    identity = identify(raw)
    assert identity is not None and identity.plan_ids == frozenset()
    assert not identity.may_see(MigrationPlan.objects.get(key="billing").pk)


def test_every_plan_is_explicit() -> None:
    make_plan("chat")
    key, raw = apikey_create(name="all", scopes=["decide"])
    assert key.all_plans and _config_keys(raw) == ["chat"]
    make_plan("later")
    forget_keys()
    forget_served()
    assert _config_keys(raw) == ["chat", "later"]  # future plans too


def test_a_key_limited_to_no_plan_is_refused() -> None:
    with pytest.raises(ValidationFailed) as caught:
        apikey_create(name="nothing", scopes=["decide"], plans=[])
    assert "plans" in caught.value.details["fields"]
    assert not ApiKey.objects.exists()


def _key_form(**fields: Any) -> dict[str, Any]:
    return {"name": "web", "scopes": ["decide"], "plans": [], **fields}


def test_the_admin_says_what_an_empty_list_means_and_refuses_it(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:migrations_app_apikey_add")).content.decode()
    assert "Empty: none." in page and 'name="all_plans"' in page
    response = admin_client.post(reverse("admin:migrations_app_apikey_add"), _key_form())
    assert response.status_code == 200
    assert "Choose the plans this key sees, or tick" in response.content.decode()
    chat = make_plan("chat")
    both = admin_client.post(
        reverse("admin:migrations_app_apikey_add"),
        _key_form(all_plans="on", plans=[chat.pk]),
    )
    assert both.status_code == 200 and "not both" in both.content.decode()
    assert not ApiKey.objects.exists()


def test_the_admin_creates_restricted_and_unrestricted_keys(admin_client: Client) -> None:
    chat = make_plan("chat")
    add = reverse("admin:migrations_app_apikey_add")
    assert admin_client.post(add, _key_form(name="one", plans=[chat.pk])).status_code == 302
    assert admin_client.post(add, _key_form(name="all", all_plans="on")).status_code == 302
    one, every = ApiKey.objects.get(name="one"), ApiKey.objects.get(name="all")
    assert (one.all_plans, list(one.plans.all())) == (False, [chat])
    assert (every.all_plans, list(every.plans.all())) == (True, [])
    listing = admin_client.get(reverse("admin:migrations_app_apikey_changelist")).content.decode()
    assert "every plan" in listing and "chat" in listing
    # Removing the last plan of a key in the admin is refused, not turned into "every plan".
    change = reverse("admin:migrations_app_apikey_change", args=[one.pk])
    response = admin_client.post(change, _key_form(name="one"))
    assert response.status_code == 200
    assert list(ApiKey.objects.get(pk=one.pk).plans.all()) == [chat]


def test_an_admin_edit_does_not_write_the_revocation_back(admin_client: Client) -> None:
    key, _ = apikey_create(name="old", scopes=["decide"])
    change = reverse("admin:migrations_app_apikey_change", args=[key.pk])
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post(change, _key_form(name="renamed", all_plans="on"))
    assert response.status_code == 302
    (update,) = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith('UPDATE "migrations_app_apikey"')
    ]
    assert '"revoked_at"' not in update.split(" WHERE ")[0]
    assert ApiKey.objects.get(pk=key.pk).name == "renamed"
