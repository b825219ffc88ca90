"""The seeded catalog and the community price-map import."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from migrations_app.models import MigrationPlan, ModelSpec
from tests.factories import make_plan

pytestmark = pytest.mark.django_db
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "price_map.json"


def _spec(model_id: str) -> ModelSpec:
    return ModelSpec.objects.get(model_id=model_id)


def test_seed_has_the_common_models() -> None:
    gpt4o = _spec("gpt-4o-2024-08-06")
    assert (gpt4o.input_price_per_mtok, gpt4o.output_price_per_mtok, gpt4o.context_window) == (
        Decimal("2.5"),
        Decimal("10"),
        128_000,
    )
    assert _spec("gemini-1.5-pro-002").context_window == 2_000_000
    assert ModelSpec.objects.count() == 12


def test_import_updates_prices_reports_malformed_and_leaves_plans_alone() -> None:
    plan = make_plan("priced")
    plan_before = MigrationPlan.objects.filter(pk=plan.pk).values().get()
    sonnet_before = _spec("claude-sonnet-4-20250514").input_price_per_mtok
    gemini_before = _spec("gemini-2.0-flash-001").output_price_per_mtok
    out, err = io.StringIO(), io.StringIO()
    call_command("import_prices", str(FIXTURE), stdout=out, stderr=err)
    assert _spec("gpt-4o-mini-2024-07-18").input_price_per_mtok == Decimal("0.12")
    assert _spec("gpt-4o-mini-2024-07-18").output_price_per_mtok == Decimal("0.48")
    haiku = _spec("claude-3-5-haiku-20241022")
    assert (haiku.input_price_per_mtok, haiku.output_price_per_mtok) == (Decimal("1"), Decimal("5"))
    # Malformed entries are named and skipped; their models keep their prices.
    assert (
        "skipped claude-sonnet-4-20250514: input_cost_per_token must be a non-negative number"
        in err.getvalue()
    )
    assert "skipped gemini-2.0-flash-001: missing input_cost_per_token" in err.getvalue()
    assert _spec("claude-sonnet-4-20250514").input_price_per_mtok == sonnet_before
    assert _spec("gemini-2.0-flash-001").output_price_per_mtok == gemini_before
    assert "2 updated, 1 unchanged, 1 not in the catalog, 2 malformed" in out.getvalue()
    assert MigrationPlan.objects.filter(pk=plan.pk).values().get() == plan_before


def test_import_rejects_a_file_that_is_not_a_price_map(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(CommandError, match="must be a JSON object"):
        call_command("import_prices", str(bad))
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_prices", str(bad))
