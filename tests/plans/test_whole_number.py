"""One parser of bounded whole numbers from text (issue 14, 3d): ASCII digits only. '²' passes
str.isdigit and fails int(), which answered 500 on the API, the admin and the dashboard."""

from __future__ import annotations

import pytest
from django.test import Client

from migrations_app.alerts.base import _retry_after
from migrations_app.api.keys import apikey_create
from migrations_app.plans.json_checks import whole_number
from tests.factories import make_plan


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("42", 42), ("100", 100), ("101", None), ("²", None), ("١٢", None), ("",
     None), (None, None), ("-1", None), (" 1", None), ("9" * 19, None)],
)  # fmt: skip
def test_whole_number(text: str | None, expected: int | None) -> None:
    assert whole_number(text, 100) == expected


def test_retry_after_with_a_unicode_digit_is_unusable_not_an_error() -> None:
    assert _retry_after("²") is None
    assert _retry_after("30") == 30.0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/plans/support-chat?expected_version=²",
        "/api/v1/plans/support-chat/label-pairs?count=²",
    ],
)
def test_the_api_answers_400_for_a_unicode_digit(url: str) -> None:
    make_plan("support-chat")
    _, raw = apikey_create(name="ci", scopes=["plans", "admin"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    if "expected_version" in url:
        response = client.delete(url)
    else:
        response = client.get(url)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["code"] == "validation_failed"
