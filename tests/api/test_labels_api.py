"""POST /api/v1/plans/{key}/labels with hostile pair ids: refused by name, never a 500."""

from __future__ import annotations

import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from tests.factories import make_plan

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("pair", ["a\x00b", "\x00", "x" * 64])
def test_a_pair_id_that_cannot_be_a_sample_is_refused_by_name(pair: str) -> None:
    make_plan("support-chat")
    _, raw = apikey_create(name="labeller", scopes=["admin"])
    response = Client(HTTP_AUTHORIZATION=f"Bearer {raw}").post(
        "/api/v1/plans/support-chat/labels",
        {"labels": [{"pair": pair, "choice": "a"}]},
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "validation_failed"
    assert "labels[0].pair" in body["details"]["fields"]
