"""A database that cannot be reached is the server's outage, not the batch's fault: ingest
answers 503 with Retry-After, which the SDK retries without a bound, never 500, which it
retries a few times and then splits and drops (turnout.reporter)."""

from __future__ import annotations

import json

import pytest
from django.db import OperationalError
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.outcomes import ingest

pytestmark = pytest.mark.django_db


def test_ingest_with_the_database_unreachable_is_503_not_500(monkeypatch) -> None:
    def unreachable(**kwargs):
        raise OperationalError("connection to server at 127.0.0.1, port 5432 failed")

    monkeypatch.setattr(ingest, "outcomes_ingest", unreachable)
    key = apikey_create(name="reporter", scopes=["report"])[1]
    response = Client(HTTP_AUTHORIZATION=f"Bearer {key}", raise_request_exception=False).post(
        "/api/v1/outcomes", data=json.dumps({"events": []}), content_type="application/json"
    )
    assert response.status_code == 503, response.content[:200]
    assert response.json()["code"] == "error"
    assert int(response["Retry-After"]) >= 1
