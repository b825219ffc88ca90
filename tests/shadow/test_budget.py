"""One cost formula (the catalog's) and one token estimate (the SDK's), for ingest's prices and
the shadow budget's reservations alike."""

from __future__ import annotations

from decimal import Decimal

import pytest
import turnout

from migrations_app.models import ModelSpec, ShadowSample
from migrations_app.outcomes.plan_info import PlanInfo, Prices
from migrations_app.plans.catalog import cost_usd
from migrations_app.shadow.budget import estimate_cost

MODEL = ModelSpec(
    model_id="m", input_price_per_mtok=Decimal("2.5"), output_price_per_mtok=Decimal("10")
)


def test_the_cost_of_a_call_at_catalog_prices() -> None:
    assert cost_usd(MODEL, 1_000_000, 100_000) == pytest.approx(2.5 + 1.0)
    assert cost_usd(MODEL, None, 10) is None  # unknown, never zero
    prices = {"control": Prices(2.5, 10.0), "candidate": Prices(0.8, 4.0)}
    info = PlanInfo(None, (), prices, {})  # type: ignore[arg-type]
    assert info.cost("control", 1_000_000, 100_000) == cost_usd(MODEL, 1_000_000, 100_000)


def test_the_reservation_estimates_tokens_as_the_sdk_does() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x" * 41}]
    sample = ShadowSample(request={"messages": messages}, control={"text": "y" * 9})
    expected = cost_usd(
        MODEL,
        turnout.estimate_tokens(messages),
        turnout.estimate_tokens([{"role": "assistant", "content": "y" * 9}]),
    )
    assert estimate_cost(MODEL, sample) == expected
    counted = ShadowSample(
        request={"messages": messages}, control={"text": "", "input_tokens": 7, "output_tokens": 3}
    )
    assert estimate_cost(MODEL, counted) == cost_usd(MODEL, 7, 3)
