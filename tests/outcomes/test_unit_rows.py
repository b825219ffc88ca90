"""A unit's totals row holds its built-in totals and its per-request metric sums, upserted in one
statement (outcomes/unit_rows.py): the database adds the sums as Python does, the
moves it returns are the sums before and after, migration 0027 moved the legacy per-metric
rows, and SQLite (the embedded mode) merges the same way."""

from __future__ import annotations

import importlib
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import connection

from migrations_app.models import MetricUnitTotals, UnitTotals
from migrations_app.outcomes import store, unit_rows
from tests.outcomes.conftest import split_plan

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def random_sums(rng: random.Random, names: list[str], width: int, first: bool) -> dict:
    return {
        name: [rng.randrange(0 if first else 1, 10**6),
               *(rng.choice([0.1, 1e-300, -1e9 * rng.random(), rng.random()])
                 for _ in range(width - 1))]
        for name in names
    }  # fmt: skip


@pytest.mark.parametrize("fast", [True, False], ids=["json-parameter", "portable"])
def test_the_upsert_adds_sums_bit_for_bit_as_python_does(fast, monkeypatch):
    monkeypatch.setattr(store, "FAST_PATH", fast)
    stage = split_plan().current_stage_id
    rng = random.Random(3)
    for case in range(60):
        width = rng.choice([2, 3])  # an arm's [n, sum], a pair's [n, sum, control's sum]
        # Some units have sums stored, each batch moves some of their names and new ones.
        stored = {
            f"u{case}-{u}": random_sums(rng, rng.sample(["a", "b", "c"], rng.randrange(0, 4)), width, True)
            for u in range(rng.randrange(1, 6))
        }  # fmt: skip
        if any(stored.values()):
            unit_rows.upsert({}, {(stage, "paired", u): sums for u, sums in stored.items()})
        delta = {
            u: random_sums(rng, rng.sample(["a", "b", "e"], rng.randrange(1, 4)), width, False)
            for u in stored
        }
        unit_rows.upsert({}, {(stage, "paired", u): sums for u, sums in delta.items()})
        for unit, sums in stored.items():
            got = UnitTotals.objects.get(stage_id=stage, arm="paired", unit=unit).metrics
            expected = store.add_sums(sums, delta[unit])
            assert got.keys() == expected.keys()
            for name in got:
                assert [repr(float(v)) for v in got[name]] == [
                    repr(float(v)) for v in expected[name]
                ]


def test_a_name_of_sums_outside_the_allowlist_never_reaches_the_sql():
    stage = split_plan().current_stage_id
    with pytest.raises(ValueError, match="not a name of sums"):
        unit_rows.upsert({}, {(stage, "control", "u"): {"a'); DROP TABLE x; --": [1, 1.0]}})


def test_python_pads_a_shorter_sum():
    assert store.add_sums({"m": [1, 2.0]}, {"m": [1, 1.0, 0.5]}) == {"m": [2.0, 3.0, 0.5]}


@pytest.mark.parametrize("fast", [True, False], ids=["json-parameter", "portable"])
def test_one_upsert_returns_built_in_and_metric_moves(fast, monkeypatch):
    monkeypatch.setattr(store, "FAST_PATH", fast)
    stage = split_plan().current_stage_id
    builtin = {(stage, "control", "u1"): (1, 0, 1, 0.5, 0, 0.0, 1, 6.0, 0, 0.0)}
    first, moved = unit_rows.upsert(builtin, {(stage, "control", "u1"): {"m": [2, 1.5]}})
    assert first[0] == [(stage, "control", "u1")] and first[1].sum() == 0
    assert moved[0] == [(stage, "control", "u1", "m")]
    assert moved[1].tolist() == [[0.0, 0.0, 0.0]] and moved[2].tolist() == [[2.0, 1.5, 0.0]]
    # A late value alone: its unit's row gains the sum; no built-in move is reported.
    first, moved = unit_rows.upsert({}, {(stage, "control", "u1"): {"m": [1, 0.25], "k": [1, 1]}})
    assert first[0] == []
    assert dict(zip(moved[0], moved[2].tolist(), strict=True)) == {
        (stage, "control", "u1", "m"): [3.0, 1.75, 0.0],
        (stage, "control", "u1", "k"): [1.0, 1.0, 0.0],
    }
    assert moved[1].tolist()[0] == [2.0, 1.5, 0.0]
    row = UnitTotals.objects.get(unit="u1")
    assert (row.requests, row.metrics) == (1, {"m": [3, 1.75], "k": [1, 1]})


def test_migration_0027_moves_the_legacy_rows_into_the_units_rows():
    stage = split_plan().current_stage_id
    UnitTotals.objects.create(stage_id=stage, arm="control", unit="u1", requests=4)
    MetricUnitTotals.objects.bulk_create([
        MetricUnitTotals(stage_id=stage, arm="control", unit="u1", metric="m", n=3, total=0.1),
        MetricUnitTotals(stage_id=stage, arm="control", unit="u1", metric="k", n=1, total=2.0),
        MetricUnitTotals(stage_id=stage, arm="paired", unit="u2", metric="m", n=2, total=1.0,
                         control_total=0.5),
    ])  # fmt: skip
    legacy = set(
        MetricUnitTotals.objects.values_list("arm", "unit", "metric", "n", "total", "control_total")
    )
    migration = importlib.import_module("migrations_app.migrations.0027_unit_metric_sums")

    with connection.schema_editor() as editor:
        migration.move_unit_sums(apps, editor)
    assert not MetricUnitTotals.objects.exists()
    rows = {(r.arm, r.unit): (r.requests, r.metrics) for r in UnitTotals.objects.all()}
    assert rows == {
        ("control", "u1"): (4, {"m": [3, 0.1], "k": [1, 2.0]}),
        ("paired", "u2"): (0, {"m": [2, 1.0, 0.5]}),
    }
    # Back to 0026: the same rows again, added to one the release before wrote meanwhile.
    MetricUnitTotals.objects.create(
        stage_id=stage, arm="control", unit="u1", metric="m", n=1, total=1.0
    )
    with connection.schema_editor() as editor:
        migration.move_back(apps, editor)
    back = set(
        MetricUnitTotals.objects.values_list("arm", "unit", "metric", "n", "total", "control_total")
    )
    assert back == (legacy - {("control", "u1", "m", 3, 0.1, 0.0)}) | {
        ("control", "u1", "m", 4, 1.1, 0.0)
    }


@pytest.mark.live
def test_sqlite_merges_a_unit_s_metric_sums_as_postgresql_does(tmp_path):
    """The embedded mode (SQLite, no PostgreSQL): migrate, then three batches of one unit."""
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        os.environ.update(DATABASE_URL="sqlite:///{tmp_path}/t.sqlite3", DEBUG="1",
                          DJANGO_SETTINGS_MODULE="controlplane.settings")
        import django
        django.setup()
        from django.core.management import call_command
        call_command("migrate", verbosity=0)
        from migrations_app.models import MetricDefinition, UnitTotals
        from migrations_app.outcomes import ingest
        from tests.outcomes.conftest import Everyone, outcome, split_plan
        plan = split_plan()
        MetricDefinition.objects.create(plan=plan, name="task_completed", kind="rate")
        MetricDefinition.objects.create(plan=plan, name="rating", kind="mean",
                                        lower_bound=0, upper_bound=5)
        for value in (0.1, 0.2, 0.7):
            event = outcome(plan, unit="u1", metrics={{"task_completed": 1, "rating": value}})
            ingest.outcomes_ingest(identity=Everyone(), payload={{"events": [event]}})
        row = UnitTotals.objects.get(unit="u1")
        print(row.requests, json.dumps(row.metrics))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    requests, metrics = done.stdout.strip().split(" ", 1)
    assert requests == "3"
    assert orjson.loads(metrics) == {
        "task_completed": [3.0, 3.0],
        "rating": [3.0, (0.1 + 0.2) + 0.7],
    }


def test_a_declared_name_the_pattern_refuses_is_refused_per_event():
    """Declared past the checks (the ORM, SQL): the event is refused by index, the rest of
    its batch stored, and the name never reaches the upsert's text."""
    from migrations_app.models import MetricDefinition, Outcome
    from migrations_app.outcomes import ingest
    from tests.outcomes.conftest import Everyone, outcome

    plan = split_plan()
    MetricDefinition.objects.create(plan=plan, name="task_completed", kind="rate")
    for name in ("ends_nl\n", "Bad_Upper"):
        MetricDefinition.objects.create(plan=plan, name=name, kind="rate")
    events = [
        outcome(plan, metrics={"ends_nl\n": 1}),
        outcome(plan, metrics={"Bad_Upper": 1}),
        outcome(plan, metrics={"task_completed": 1}),
    ]
    result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
    assert result.stored == 1
    assert [(r.index, r.code) for r in result.rejected] == [(0, "invalid"), (1, "invalid")]
    assert Outcome.objects.get().event_id == events[2]["id"]
    with pytest.raises(ValidationError) as refused:
        MetricDefinition(plan=plan, name="ends_nl\n", kind="rate").full_clean()
    assert "name" in refused.value.message_dict


def test_a_batch_of_many_names_comes_back_whole():
    """Each row's sums come back in one array, not a column per number: 900 names (past
    PostgreSQL's 1,664 result columns at two numbers each) move as a few do."""
    stage = split_plan().current_stage_id
    names = [f"m{i:03d}" for i in range(900)]
    moved = {(stage, "control", f"u{i % 30}"): {} for i in range(30)}
    for i, name in enumerate(names):
        moved[(stage, "control", f"u{i % 30}")][name] = [1, i / 4]
    unit_rows.upsert({}, moved)
    _, (keys, old, new) = unit_rows.upsert({}, moved)
    assert len(keys) == 900
    after = {key[3]: row for key, row in zip(keys, new.tolist(), strict=True)}
    before = {key[3]: row for key, row in zip(keys, old.tolist(), strict=True)}
    assert after["m899"] == [2.0, 899 / 2, 0.0] and before["m899"] == [1.0, 899 / 4, 0.0]
    assert UnitTotals.objects.get(unit="u7").metrics["m037"] == [2, 37 / 2]
