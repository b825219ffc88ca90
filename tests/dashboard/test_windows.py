"""The chart windows' fast path (PostgreSQL, hour blocks kept per process) against the
straightforward computations on the same rows: the portable row-by-row path, and
``ArmAggregates.merge`` over every window of a bin."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from migrations_app.dashboard import chart_series, charts, figures, window_cache
from migrations_app.guardrails.stats import ArmAggregates, Buckets
from migrations_app.models import WindowAggregate
from migrations_app.outcomes import rollup
from migrations_app.outcomes.aggregate_json import from_json
from migrations_app.outcomes.aggregation import OutcomeFacts, window_start
from migrations_app.outcomes.segment_rollup import catch_up
from migrations_app.outcomes.selectors import stage_totals
from tests.dashboard.data import running_plan

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the fast path is PostgreSQL's"),
]

CHART_FIELDS = (
    "requests", "errors", "errors_by_kind", "latency", "ttft",
    "cost_n", "cost_sum", "feedback_n", "feedback_sum",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _empty_cache():
    window_cache.CACHE.clear()
    yield
    window_cache.CACHE.clear()


def _traffic(
    stage_id: int, *, start: datetime, minutes: int, seed: int = 7, savepoint: bool = True
) -> None:
    """Outcomes with what the charts read in every shape: two error kinds, outcomes without
    a ttft or a cost, zero latencies (the zero bucket), feedback on some, idle minutes."""
    rng = random.Random(seed)
    outcomes, scored = [], []
    for m in range(minutes):
        window = window_start(start + timedelta(minutes=m))
        for arm, base in (("control", 600.0), ("candidate", 900.0)):
            if rng.random() < 0.1:
                continue  # a minute without traffic for this arm
            for i in range(rng.randrange(1, 5)):
                draw = rng.random()
                facts = OutcomeFacts(
                    arm=arm,
                    unit=f"u{rng.randrange(50)}",
                    window=window,
                    latency_ms=0.0 if draw < 0.03 else rng.lognormvariate(0, 0.6) * base,
                    ttft_ms=None if draw > 0.9 else rng.lognormvariate(0, 0.6) * base / 4,
                    error="timeout" if draw < 0.05 else "rate_limit" if draw > 0.97 else "",
                    cost_usd=None if draw > 0.8 else rng.uniform(0.0001, 0.01),
                )
                outcomes.append((stage_id, facts))
                if i == 0 and rng.random() < 0.5:
                    scored.append((stage_id, facts, rng.random()))
    if savepoint:  # a subtransaction: its own xid, so its rows' xmin moves
        with transaction.atomic():
            rollup.aggregate(outcomes, scored)
            catch_up()
    else:
        rollup.aggregate(outcomes, scored)
        catch_up()


def _merged(stage_ids, *, since, until, step_minutes):
    """Per arm and bin, ArmAggregates.merge of the bin's stored windows (the engine's merge)."""
    step = timedelta(minutes=step_minutes)
    bins: dict[str, dict[int, list[ArmAggregates]]] = {}
    catch_up()
    rows = WindowAggregate.objects.filter(
        stage_id__in=stage_ids, window__gte=since, window__lt=until
    ).values_list("arm", "window", "data")
    for arm, window, data in rows:
        bins.setdefault(arm, {}).setdefault(int((window - since) / step), []).append(
            from_json(data)
        )
    return {
        arm: [(since + i * step, ArmAggregates.merge(parts)) for i, parts in sorted(b.items())]
        for arm, b in bins.items()
    }


def _chart_fields(agg: ArmAggregates) -> tuple:
    return tuple(getattr(agg, name) for name in CHART_FIELDS)


def test_the_fast_path_is_the_row_by_row_computation_for_every_range() -> None:
    plan = running_plan("p1", hours_ago=28)
    stage = plan.current_stage
    now = timezone.now()
    first = window_start(now - timedelta(hours=27, minutes=13))
    _traffic(stage.pk, start=first, minutes=27 * 60 + 14)
    until = now + timedelta(minutes=1)
    ranges = [
        (until - timedelta(hours=1), 1),
        (until - timedelta(hours=6), 2),
        (until - timedelta(hours=7, minutes=13), 5),  # starts mid-hour
        (until - timedelta(hours=24), 10),
        (first, 15),  # all the traffic
        (until - timedelta(hours=40), 60),  # before the run: empty leading hours
    ]
    for since, step in ranges:
        since = since.replace(second=0, microsecond=0)
        portable = chart_series.window_series_portable([stage.pk], since=since, until=until,
                                              step_minutes=step)  # fmt: skip
        for _ in ("read", "kept"):
            fast = chart_series.window_series(
                [stage.pk], since=since, until=until, step_minutes=step
            )
            assert fast == portable, (since, step)
        assert sum(len(points) for points in fast.values()) > 0
        merged = _merged([stage.pk], since=since, until=until, step_minutes=step)
        for arm in figures.ARMS:
            assert [(t, _chart_fields(a)) for t, a in fast[arm]] == [
                (t, _chart_fields(a)) for t, a in merged.get(arm, [])
            ], (since, step, arm)
        # What the page draws from them, byte for byte.
        args = {"start": since, "end": until, "step_minutes": step}
        assert charts.window_charts(fast, **args) == charts.window_charts(portable, **args)
    whole = chart_series.window_series([stage.pk], since=first, until=until, step_minutes=24 * 60)
    totals = stage_totals(stage)
    for arm in figures.ARMS:
        (_, day), *rest = whole[arm]
        day = ArmAggregates.merge([day, *(a for _, a in rest)])
        assert (day.requests, day.latency, day.errors_by_kind) == (
            totals[arm].requests, totals[arm].latency, totals[arm].errors_by_kind
        )  # fmt: skip
    assert totals["control"].errors_by_kind.keys() == {"timeout", "rate_limit"}
    assert totals["control"].latency.zero_count > 0


def test_an_hour_written_after_it_was_kept_is_read_again() -> None:
    plan = running_plan("p1", hours_ago=6)
    stage = plan.current_stage
    now = timezone.now()
    start = window_start(now - timedelta(hours=5))
    _traffic(stage.pk, start=start, minutes=5 * 60, savepoint=False)
    args = {"since": start, "until": now + timedelta(minutes=1), "step_minutes": 2}
    before = chart_series.window_series([stage.pk], **args)
    kept = len(window_cache.CACHE)
    assert kept >= 5
    # Late outcomes into an hour read long ago, then feedback alone into another, in the
    # reader's own transaction (xmin does not move): the hours' requests and feedback tell.
    _traffic(stage.pk, start=start + timedelta(minutes=30), minutes=3, seed=8, savepoint=False)
    after = chart_series.window_series([stage.pk], **args)
    assert after != before
    assert after == chart_series.window_series_portable([stage.pk], **args)
    catch_up()
    late = (
        WindowAggregate.objects.filter(stage=stage, window__gte=start + timedelta(hours=2))
        .order_by("window")
        .first()
    )
    fact = OutcomeFacts(late.arm, "u1", late.window, 500.0, None, "", None)
    rollup.aggregate([], [(stage.pk, fact, 1.0)])
    again = chart_series.window_series([stage.pk], **args)
    assert again != after and again == chart_series.window_series_portable([stage.pk], **args)
    assert len(window_cache.CACHE) == kept


@pytest.mark.django_db(transaction=True)
def test_a_committed_rewrite_that_keeps_the_counts_is_read_again() -> None:
    """Any committed write moves the hour's sum of xmin, whatever it changed."""
    plan = running_plan("p1", hours_ago=3)
    stage = plan.current_stage
    start = window_start(timezone.now() - timedelta(hours=2))
    _traffic(stage.pk, start=start, minutes=120)
    args = {"since": start, "until": timezone.now() + timedelta(minutes=1), "step_minutes": 1}
    before = chart_series.window_series([stage.pk], **args)
    catch_up()
    row = WindowAggregate.objects.filter(stage=stage, arm="control", requests__gt=0).first()
    data = dict(row.data)
    data["latency"] = {"zero": row.requests, "counts": {}}  # same requests, other buckets
    WindowAggregate.objects.filter(pk=row.pk).update(data=data)
    after = chart_series.window_series([stage.pk], **args)
    point = next(a for t, a in after["control"] if t == row.window)
    assert point.latency == Buckets(counts={}, zero_count=row.requests)
    assert after != before and after == chart_series.window_series_portable([stage.pk], **args)


def test_one_query_whether_the_hours_are_kept_or_read(django_assert_num_queries) -> None:
    plan = running_plan("p1", hours_ago=4)
    stage = plan.current_stage
    start = window_start(timezone.now() - timedelta(hours=3))
    _traffic(stage.pk, start=start, minutes=180)
    args = {"since": start, "until": timezone.now() + timedelta(minutes=1), "step_minutes": 2}
    # One read, after the one query that finds nothing pending to fold (catch_up).
    with django_assert_num_queries(2):
        cold = chart_series.window_series([stage.pk], **args)
    with django_assert_num_queries(2):
        warm = chart_series.window_series([stage.pk], **args)
    assert cold == warm == chart_series.window_series_portable([stage.pk], **args)
    assert len(warm["control"]) > 80


def test_the_cache_drops_the_least_recently_used_hours_past_its_size() -> None:
    plan = running_plan("p1", hours_ago=4)
    stage = plan.current_stage
    start = window_start(timezone.now() - timedelta(hours=3))
    _traffic(stage.pk, start=start, minutes=180)
    args = {"since": start, "until": timezone.now() + timedelta(minutes=1), "step_minutes": 5}
    expected = chart_series.window_series_portable([stage.pk], **args)
    small = window_cache._Cache(max_pairs=1)
    original, window_cache.CACHE = window_cache.CACHE, small
    try:
        assert chart_series.window_series([stage.pk], **args) == expected
        assert len(small) == 1  # one hour larger than the budget is kept, not more
        assert chart_series.window_series([stage.pk], **args) == expected
    finally:
        window_cache.CACHE = original


def test_many_bins_merge_by_sorting_to_the_same_figures(monkeypatch) -> None:
    plan = running_plan("p1", hours_ago=4)
    stage = plan.current_stage
    start = window_start(timezone.now() - timedelta(hours=3, minutes=20))
    _traffic(stage.pk, start=start, minutes=200)
    args = {"since": start, "until": timezone.now() + timedelta(minutes=1), "step_minutes": 1}
    expected = chart_series.window_series_portable([stage.pk], **args)
    monkeypatch.setattr(window_cache, "DENSE_CELLS", 0)  # as if bins x keys were past the table
    assert chart_series.window_series([stage.pk], **args) == expected
    assert sum(len(points) for points in expected.values()) > 300
