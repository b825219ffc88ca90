"""Every admin action asks for the permission its write needs (review defect M1): a staff user
who may only view is offered none of them, and posting one anyway changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.test import Client, RequestFactory
from django.urls import reverse

from migrations_app.api.keys import apikey_authenticate, apikey_create
from migrations_app.models import AlertChannel, AlertDelivery, ApiKey, MigrationPlan
from tests.factories import make_plan, make_user

pytestmark = pytest.mark.django_db


def _turnout_admins() -> list[tuple[type, admin.ModelAdmin]]:
    return [
        (model, model_admin)
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label == "migrations_app"
    ]


def _viewer() -> Any:
    """Staff with the view permission on every Turnout model, and nothing else."""
    user = make_user("viewer", superuser=False)
    user.is_staff = True
    user.save()
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="migrations_app", codename__startswith="view_"
        )
    )
    return type(user).objects.get(pk=user.pk)  # the permission cache starts empty


def test_every_action_declares_a_permission_beyond_view() -> None:
    # Django offers an action without ``permissions=`` to anyone who may see the list.
    for model, model_admin in _turnout_admins():
        for func, name, _ in model_admin._get_base_actions():
            allowed = getattr(func, "allowed_permissions", ())
            assert allowed, f"{model.__name__} admin: action {name} declares no permission"
            assert "view" not in allowed, f"{model.__name__} admin: {name} allowed to viewers"


def test_a_viewer_is_offered_no_action_on_any_page() -> None:
    request = RequestFactory().get("/admin/")
    request.user = _viewer()
    for model, model_admin in _turnout_admins():
        assert model_admin.has_view_permission(request), model.__name__
        offered = sorted(model_admin.get_actions(request))
        assert offered == [], f"{model.__name__} admin offers {offered} to a viewer"


def _changelist_post(client: Client, model: type, action: str, pks: list[int]) -> Any:
    url = reverse(f"admin:migrations_app_{model._meta.model_name}_changelist")
    return client.post(url, {"action": action, "_selected_action": pks}, follow=True)


def test_a_viewer_cannot_revoke_a_key() -> None:
    key, plaintext = apikey_create(name="web", scopes=["decide"], plans=None)
    client = Client()
    client.force_login(_viewer())
    listing = client.get(reverse("admin:migrations_app_apikey_changelist"))
    assert listing.status_code == 200 and 'value="revoke"' not in listing.content.decode()
    response = _changelist_post(client, ApiKey, "revoke", [key.pk])
    assert response.status_code == 200 and "Revoked 1 key" not in response.content.decode()
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    assert apikey_authenticate(plaintext) == key


def test_a_user_with_the_change_permission_revokes() -> None:
    key, plaintext = apikey_create(name="web", scopes=["decide"], plans=None)
    user = _viewer()
    user.user_permissions.add(Permission.objects.get(codename="change_apikey"))
    client = Client()
    client.force_login(type(user).objects.get(pk=user.pk))
    response = _changelist_post(client, ApiKey, "revoke", [key.pk])
    assert "Revoked 1 key(s)." in response.content.decode()
    assert apikey_authenticate(plaintext) is None


def test_a_viewer_cannot_act_on_plans_or_send_test_alerts() -> None:
    plan = make_plan("viewed")
    channel = AlertChannel.objects.create(name="ops", kind="slack", url_env="X")
    plan.alert_channels.add(channel)
    client = Client()
    client.force_login(_viewer())
    for action in ("start", "send_test_alert"):
        response = _changelist_post(client, MigrationPlan, action, [plan.pk])
        assert response.status_code == 200
    _changelist_post(client, AlertChannel, "send_test_alert", [channel.pk])
    _changelist_post(client, AlertChannel, "delete_selected", [channel.pk])
    assert MigrationPlan.objects.get(pk=plan.pk).status == "draft"
    assert (
        not AlertDelivery.objects.exists() and AlertChannel.objects.filter(pk=channel.pk).exists()
    )
