"""/metrics with TURNOUT_METRICS_TOKEN: the bearer token is compared in constant time (no
timing oracle on how much of a guess was right) and any header value is a 401, never a 500."""

from __future__ import annotations

import hmac
from typing import Any

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db
TOKEN = "scrape-me-0123456789"


@override_settings(TURNOUT_METRICS_TOKEN=TOKEN)
def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/metrics").status_code == 200
    assert Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN[:-1]}x").get("/metrics").status_code == 401
    assert len(compared) == 2 and all(f"Bearer {TOKEN}".encode() in pair for pair in compared)


@override_settings(TURNOUT_METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        f"bearer {TOKEN}",
        f"Bearer {TOKEN} ",
        f"Bearer {TOKEN}x",
        "Bearer \u00e9\u00e9",
        TOKEN,
    ],
)
def test_anything_but_the_exact_token_is_401(header: str) -> None:
    response = Client(HTTP_AUTHORIZATION=header).get("/metrics")
    assert response.status_code == 401
    assert b"turnout_" not in response.content
