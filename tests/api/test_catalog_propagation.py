"""Provider connection and model catalog edits reach the web processes and the SDKs as plan
changes do: the snapshot carries each arm's base URL, key variable, model id and context
window, so an edit is a routing change. The shadow workers' adapters follow the edit too."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.models import MigrationPlan, ModelSpec, ProviderConnection
from migrations_app.shadow import calls
from tests.conftest import eventually
from tests.factories import make_user, started_plan

pytestmark = pytest.mark.django_db(transaction=True)
NEW_URL = "http://127.0.0.1:9/v1"  # loopback: allowed by the default provider host rules


@pytest.fixture
def key(transactional_db: None) -> str:
    return apikey_create(name="sdk", scopes=["decide", "report"])[1]


@pytest.fixture
def running(transactional_db: None) -> MigrationPlan:
    return started_plan("chat")


def _control(api: Client) -> dict[str, Any]:
    answer = api.get("/api/v1/sdk/config")
    assert answer.status_code == 200
    return dict({p["key"]: p for p in answer.json()["plans"]}["chat"]["control"])


def test_an_admin_edit_of_a_provider_connection_reaches_the_config(
    api: Client, running: MigrationPlan
) -> None:
    assert _control(api)["base_url"] == ""
    provider = running.control_model.provider
    admin = Client()
    admin.force_login(make_user())
    saved = admin.post(
        f"/admin/migrations_app/providerconnection/{provider.pk}/change/",
        {
            "name": provider.name,
            "kind": provider.kind,
            "base_url": NEW_URL,
            "api_key_env": provider.api_key_env,
            "max_concurrent_calls": provider.max_concurrent_calls,
            "max_calls_per_second": "",
        },
    )
    assert saved.status_code == 302, saved.content[:2000]
    assert eventually(lambda: _control(api)["base_url"] == NEW_URL)


def test_a_catalog_edit_reaches_the_config(api: Client, running: MigrationPlan) -> None:
    model = running.control_model
    assert _control(api)["context_window"] == model.context_window
    ModelSpec.objects.get(pk=model.pk).save()  # no change: nothing for SDKs to fetch
    model.context_window = 4096
    model.save()  # as the price import does (a saved row, not the admin)
    assert eventually(lambda: _control(api)["context_window"] == 4096)


@pytest.mark.live
def test_a_provider_edit_reaches_every_gunicorn_worker(
    gunicorn_factory: Any,
    key: str,
    running: MigrationPlan,
) -> None:
    server = gunicorn_factory()

    def served_base_urls() -> set[str]:
        # A connection per request: the kernel spreads them over both workers (reuse_port).
        found = set()
        for _ in range(20):
            answer = httpx.get(
                f"{server.url}/api/v1/sdk/config",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30.0,  # a worker's first request imports the URLconf
            )
            found.add({p["key"]: p for p in answer.json()["plans"]}["chat"]["control"]["base_url"])
        return found

    assert served_base_urls() == {""}
    provider = ProviderConnection.objects.get(pk=running.control_model.provider_id)
    provider.base_url = NEW_URL
    provider.full_clean()
    provider.save()
    assert eventually(lambda: served_base_urls() == {NEW_URL}, timeout=30)


def test_the_shadow_workers_call_the_edited_connection(
    running: MigrationPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(running.candidate_model.provider.api_key_env, "sk-test")
    before = calls.candidate_spec(running)
    adapter, _ = calls._adapters.get(before)
    provider = running.candidate_model.provider
    provider.base_url = NEW_URL
    provider.save()
    # A shadow task loads its plan afresh; the arm it builds names the new connection, and the
    # process's adapter cache gives it an adapter for that, not the one it kept.
    after = calls.candidate_spec(MigrationPlan.objects.get(pk=running.pk))
    edited, _ = calls._adapters.get(after)
    assert after.base_url == NEW_URL and edited is not adapter
    assert edited.base_url == NEW_URL and adapter.base_url == ""
