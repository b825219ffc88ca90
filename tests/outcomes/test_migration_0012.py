"""Schema migration 0012 rebuilds the third-order unit moments of stage totals written before
them, from the units' totals, so a stage running through the upgrade keeps exact sums."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from django.apps import apps

from migrations_app.guardrails.stats import CLUSTER_MOMENTS, ClusterSums
from migrations_app.models import StageAggregate, UnitTotals
from migrations_app.outcomes import aggregate_json, ingest
from migrations_app.outcomes.segment_rollup import catch_up
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db

migration = importlib.import_module("migrations_app.migrations.0012_unittotals_latency_logs")


def test_third_moments_of_old_stage_totals_are_rebuilt_from_unit_totals() -> None:
    plan = split_plan()
    events = [
        outcome(plan, unit=f"u{i % 7}", error="timeout" if i % 5 == 0 else None) for i in range(60)
    ]
    assert not ingest.outcomes_ingest(identity=Everyone(), payload={"events": events}).rejected
    catch_up()
    row = StageAggregate.objects.get(stage=plan.current_run.stages.last(), arm="control")
    fresh = aggregate_json.from_json(row.data)
    # As a row written before the moments existed: four values per cluster sum.
    row.data = {k: v[:4] if k.endswith("_clusters") else v for k, v in row.data.items()}
    row.save(update_fields=["data"])
    assert aggregate_json.from_json(row.data).error_clusters.sum_nnn == 0.0

    migration.third_moments(apps, None)

    row.refresh_from_db()
    rebuilt = aggregate_json.from_json(row.data)
    units = UnitTotals.objects.filter(stage=row.stage, arm="control")
    y, n = (np.array(units.values_list(c, flat=True), dtype=float) for c in ("errors", "requests"))
    expected = ClusterSums.from_units(y, n)
    for name in CLUSTER_MOMENTS:
        assert getattr(rebuilt.error_clusters, name) == pytest.approx(getattr(expected, name))
        assert getattr(rebuilt.error_clusters, name) == pytest.approx(
            getattr(fresh.error_clusters, name)
        )
    assert rebuilt.cost_clusters.sum_nnn == pytest.approx(fresh.cost_clusters.sum_nnn)
    # A second run changes nothing (rows already at full length are left alone).
    migration.third_moments(apps, None)
    row.refresh_from_db()
    assert aggregate_json.from_json(row.data) == rebuilt
