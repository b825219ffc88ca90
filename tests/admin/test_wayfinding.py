"""Finding one's way in the admin: the product's name on every page, the plan list leading to
each plan's dashboard, API keys whose scopes and plans read at a glance, and a new key that can
be copied (issue 18, item 6)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from migrations_app.api.keys import apikey_create
from migrations_app.models import ApiKey
from tests.factories import make_plan

pytestmark = pytest.mark.django_db


ADMIN_PAGES = (
    "/admin/",
    "/admin/migrations_app/migrationplan/",
    "/admin/migrations_app/migrationplan/add/",
    "/admin/migrations_app/apikey/",
    "/admin/migrations_app/modelspec/",
)


def test_every_admin_page_carries_the_products_name(admin_client: Client) -> None:
    make_plan("p1")
    pages = {path: admin_client.get(path) for path in ADMIN_PAGES}
    pages["/admin/login/"] = Client().get("/admin/login/")
    for path, response in pages.items():
        page = response.content.decode()
        assert response.status_code == 200, path
        assert "Django administration" not in page and "Django site admin" not in page, path
        title = re.search(r"<title>(.*?)</title>", page, re.S)
        assert title and title.group(1).strip().endswith("Turnout"), (path, title)
        assert re.search(r'id="site-name".*?Turnout', page, re.S), path


def test_every_admin_page_links_the_home_page(admin_client: Client) -> None:
    for path in ADMIN_PAGES:
        page = admin_client.get(path).content.decode()
        assert re.search(r'<a href="/" class="turnout-home">', page), path


def test_the_plan_list_links_each_dashboard_right_after_the_key(admin_client: Client) -> None:
    """At a laptop's width the last columns of a wide list scroll out of sight: the dashboard
    link sits right after the key, the models read as one short column."""
    make_plan("support-chat")
    page = admin_client.get("/admin/migrations_app/migrationplan/").content.decode()
    headers = re.findall(r'<th scope="col"\s+class="(?:sortable )?column-(\w+)', page)
    assert headers[:2] == ["key", "dashboard"], headers
    assert "control_model" not in headers and "candidate_model" not in headers
    assert 'href="/plans/support-chat/"' in page
    assert "GPT-4o → Claude Sonnet 4" in page


def test_api_keys_list_their_scopes_in_words_and_their_plans(admin_client: Client) -> None:
    p1, p2 = make_plan("support-chat"), make_plan("faq")
    apikey_create(name="web", scopes=["decide", "report"], plans=[p1, p2])
    apikey_create(name="ops", scopes=["admin"])
    page = admin_client.get("/admin/migrations_app/apikey/").content.decode()
    assert "[&quot;decide&quot;" not in page and '["decide"' not in page  # no raw JSON list
    web = page.split(">web<", 1)[1].split("</tr>", 1)[0]
    assert "decide, report" in web
    assert "faq, support-chat" in web
    ops = page.split(">ops<", 1)[1].split("</tr>", 1)[0]
    assert "admin" in ops and "every plan" in ops
    assert re.search(r"class=\"column-sees\"[^>]*>.*?plans", page, re.S | re.I)


def test_a_new_key_is_shown_once_with_a_copy_button(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:migrations_app_apikey_add"),
        {"name": "web", "scopes": ["decide"], "all_plans": "on"},
        follow=True,
    )
    page = response.content.decode()
    key = ApiKey.objects.get(name="web")
    shown = re.search(r'<code id="new-api-key">(tk_[^<]+)</code>', page)
    assert shown and shown.group(1).startswith(f"tk_{key.prefix}_")
    button = re.search(
        r'<button type="button"[^>]*data-copy="#new-api-key"[^>]*>Copy</button>', page
    )
    assert button, page.split('class="messagelist"', 1)[-1][:600]
    assert "data-copy" in page and "navigator.clipboard" in page  # the script the button uses
    # Shown once: the next page does not carry it.
    again = admin_client.get(reverse("admin:migrations_app_apikey_changelist")).content.decode()
    assert shown.group(1) not in again
