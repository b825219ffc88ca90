from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client

from migrations_app.api.auth import forget_keys, forget_windows
from migrations_app.api.keys import apikey_create
from migrations_app.routing.snapshots import forget_served
from tests.processes import gunicorn_factory  # noqa: F401 (a fixture for the live tests here)


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    forget_keys()
    forget_windows()
    forget_served()
    yield
    forget_keys()
    forget_windows()
    forget_served()


@pytest.fixture
def sdk_key(transactional_db: None) -> str:
    return apikey_create(name="sdk", scopes=["decide", "report"])[1]


@pytest.fixture
def api(sdk_key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {sdk_key}")
