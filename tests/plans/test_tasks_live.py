"""A real Celery worker, on the real Redis broker, runs the project's tasks end to end."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from migrations_app.models import ModelSpec
from migrations_app.plans import tasks
from tests.plans.test_catalog import FIXTURE

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


def test_worker_imports_prices_from_the_queue(celery_worker_process: Any) -> None:
    mini = ModelSpec.objects.get(model_id="gpt-4o-mini-2024-07-18")
    assert mini.input_price_per_mtok == Decimal("0.15")
    tasks.import_prices.delay(str(FIXTURE))  # through the broker, not eager
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mini.refresh_from_db()
        if mini.input_price_per_mtok == Decimal("0.12"):
            break
        time.sleep(0.2)
    assert mini.input_price_per_mtok == Decimal("0.12")
    assert celery_worker_process.poll() is None
