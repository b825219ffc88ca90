"""A plan key in a URL holding a NUL (or what decodes to a lone surrogate) is a 404 from the
resolver, not a query PostgreSQL refuses (issue 14, 3c)."""

from __future__ import annotations

import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from tests.factories import make_plan, make_user

pytestmark = pytest.mark.django_db

BAD_KEYS = ["a%00", "%00", "a%00b"]
API_PATHS = ["", "/pause", "/label-pairs", "/labels"]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize("tail", API_PATHS)
@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete"])
def test_the_api_answers_404_for_a_key_no_plan_can_have(key: str, tail: str, method: str) -> None:
    make_plan("support-chat")
    _, raw = apikey_create(name="ci", scopes=["plans", "admin"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    url = f"/api/v1/plans/{key}{tail}"
    if method == "get":
        response = client.get(url)
    else:
        response = getattr(client, method)(url, "{}", content_type="application/json")
    assert response.status_code == 404, response.content[:300]
    # in the API's error format, as every other API answer (Django's HTML page before)
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/ofrep/v1/nope", "/api/v2/plans"])
def test_a_path_no_api_route_takes_is_a_json_404(path: str) -> None:
    response = Client().get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_a_page_no_route_takes_is_still_the_html_404() -> None:
    response = Client().get("/no-such-page")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize("tail", ["/", "/live", "/report", "/judge", "/act/pause"])
def test_the_dashboard_answers_404_for_a_key_no_plan_can_have(key: str, tail: str) -> None:
    client = Client()
    client.force_login(make_user("admin"))
    assert client.get(f"/plans/{key}{tail}").status_code == 404


def test_a_real_key_still_routes() -> None:
    make_plan("support-chat.v2_x-1")
    _, raw = apikey_create(name="ci", scopes=["plans"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/plans/support-chat.v2_x-1").status_code == 200


def test_broken_utf8_in_a_key_is_no_500() -> None:
    # Django re-percent-encodes it: a storable key no plan has.
    _, raw = apikey_create(name="ci", scopes=["plans", "admin"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/plans/a%ED%A0%80").status_code == 404
    assert client.get("/api/v1/plans/a%ED%A0%80/label-pairs").status_code == 404
