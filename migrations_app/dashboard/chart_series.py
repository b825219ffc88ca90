"""The charts' series: a run's minute windows summed into bins (on PostgreSQL through the window
cache), and the engine's running bounds, one point per bin. One query each.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import DateTimeField, F, Func, Value
from django.db.models.expressions import RawSQL

from migrations_app.dashboard import window_cache
from migrations_app.dashboard.figures import ARMS
from migrations_app.guardrails.stats import ArmAggregates, Buckets
from migrations_app.models import (
    Evaluation,
    MigrationPlan,
    PlanRun,
    WindowAggregate,
)
from migrations_app.outcomes.segment_rollup import catch_up

# Chart points per series at most: a week of minutes is binned into ~200 points.
MAX_POINTS = 200


STEP_CHOICES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)


def step_minutes_for(span: timedelta) -> int:
    """The smallest round bin (in minutes) that keeps a span under MAX_POINTS points."""
    minutes = max(1.0, span.total_seconds() / 60)
    for step in STEP_CHOICES:
        if minutes / step <= MAX_POINTS:
            return step
    return STEP_CHOICES[-1]


# --- window series ----------------------------------------------------------------------


@dataclass(slots=True)
class _Bin:
    requests: int = 0
    errors: int = 0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    # Bucket keys stay strings (as stored) while summing; converted once per bin.
    latency: dict[str, int] = field(default_factory=dict)
    latency_zero: int = 0
    ttft: dict[str, int] = field(default_factory=dict)
    ttft_zero: int = 0
    cost_n: int = 0
    # Float sums kept as their terms and summed exactly rounded once per bin, as
    # ArmAggregates.merge does: the figure does not depend on the order rows arrive in.
    cost_sums: list[float] = field(default_factory=list)
    feedback_n: int = 0
    feedback_sums: list[float] = field(default_factory=list)

    def aggregates(self) -> ArmAggregates:
        return ArmAggregates(
            requests=self.requests,
            errors=self.errors,
            errors_by_kind=dict(self.errors_by_kind),
            latency=Buckets(
                counts={int(k): v for k, v in self.latency.items()}, zero_count=self.latency_zero
            ),
            ttft=Buckets(
                counts={int(k): v for k, v in self.ttft.items()}, zero_count=self.ttft_zero
            ),
            cost_n=self.cost_n,
            cost_sum=math.fsum(self.cost_sums),
            feedback_n=self.feedback_n,
            feedback_sum=math.fsum(self.feedback_sums),
        )


def _add_counts(acc: dict[str, int], counts: Mapping[str, int] | None) -> None:
    if counts:
        get = acc.get
        for key, count in counts.items():
            acc[key] = get(key, 0) + count


_SCALARS = (
    "window",
    "arm",
    "requests",
    "errors",
    "cost_n",
    "cost_sum",
    "feedback_n",
    "feedback_sum",
)


# PostgreSQL sends the JSON parts a chart reads as one small text per row (one parse each);
# the cluster sums and log sums stay in the database.
_PARTS_SQL = (
    "jsonb_build_array(d->'errors_by_kind', d->'latency'->'counts', d->'latency'->'zero', "
    "d->'ttft'->'counts', d->'ttft'->'zero')::text"
).replace("d->", '"migrations_app_windowaggregate"."data"->')


def _window_rows(stage_ids: Sequence[int], since: datetime, until: datetime) -> Iterable[Any]:
    """(window, arm, requests, errors, cost_n, cost_sum, feedback_n, feedback_sum,
    [errors_by_kind, latency counts, latency zero, ttft counts, ttft zero])."""
    query = WindowAggregate.objects.filter(
        stage_id__in=stage_ids, window__gte=since, window__lt=until
    )
    if connection.vendor == "postgresql":
        for *scalars, parts in query.annotate(parts=RawSQL(_PARTS_SQL, ())).values_list(
            *_SCALARS, "parts"
        ):
            yield (*scalars, json.loads(parts))
        return
    for *scalars, kinds, lat, ttft in query.values_list(
        *_SCALARS, "data__errors_by_kind", "data__latency", "data__ttft"
    ):
        lat, ttft = lat or {}, ttft or {}
        parts = [kinds, lat.get("counts"), lat.get("zero"), ttft.get("counts"), ttft.get("zero")]
        yield (*scalars, parts)


def window_series(
    stage_ids: Sequence[int], *, since: datetime, until: datetime, step_minutes: int
) -> dict[str, list[tuple[datetime, ArmAggregates]]]:
    """Per arm, the stages' windows in [since, until) summed into bins of ``step_minutes``
    (bin start, aggregates): counts, error kinds, latency and ttft buckets, cost and
    feedback sums. Cluster sums are left out: charts do not test, they describe.

    On PostgreSQL through ``dashboard.window_cache`` (a stage's rows parsed once per clock hour,
    kept in the process and read again when the hour changes), elsewhere
    :func:`window_series_portable`; the same figures, one query either way, after the one of
    the fold of what ingest left pending (``segment_rollup.catch_up``)."""
    if connection.vendor == "postgresql":
        catch_up(stage_ids, wait=False)
        series: dict[str, list[tuple[datetime, ArmAggregates]]] = {arm: [] for arm in ARMS}
        series.update(
            window_cache.window_series(
                stage_ids, since=since, until=until, step_minutes=step_minutes
            )
        )
        return series
    return window_series_portable(stage_ids, since=since, until=until, step_minutes=step_minutes)


def window_series_portable(
    stage_ids: Sequence[int], *, since: datetime, until: datetime, step_minutes: int
) -> dict[str, list[tuple[datetime, ArmAggregates]]]:
    """:func:`window_series` row by row in Python, on any database: every row's JSON parts
    read and summed into its bin. One query (after the fold's, ``segment_rollup.catch_up``)."""
    catch_up(stage_ids, wait=False)
    step = timedelta(minutes=step_minutes)
    bins: dict[tuple[str, int], _Bin] = {}
    for window, arm, requests, errors, cost_n, cost_sum, fb_n, fb_sum, parts in _window_rows(
        stage_ids, since, until
    ):
        kinds, lat, lat_zero, ttft, ttft_zero = parts
        index = int((window - since) / step)
        b = bins.get((arm, index))
        if b is None:
            b = bins[(arm, index)] = _Bin()
        b.requests += requests
        b.errors += errors
        b.cost_n += cost_n
        b.cost_sums.append(cost_sum)
        b.feedback_n += fb_n
        b.feedback_sums.append(fb_sum)
        if kinds:
            b.errors_by_kind.update(kinds)
        _add_counts(b.latency, lat)
        _add_counts(b.ttft, ttft)
        b.latency_zero += lat_zero or 0
        b.ttft_zero += ttft_zero or 0
    series: dict[str, list[tuple[datetime, ArmAggregates]]] = {arm: [] for arm in ARMS}
    for (arm, index), b in sorted(bins.items(), key=lambda item: item[0][1]):
        series.setdefault(arm, []).append((since + index * step, b.aggregates()))
    return series


# --- the evaluations' bounds over time ---------------------------------------------------


def bound_series(
    plan: MigrationPlan, run: PlanRun, *, since: datetime, until: datetime, step_minutes: int
) -> list[tuple[datetime, dict[str, Any]]]:
    """The running bounds per guardrail, the last evaluation of each bin: (when, bounds).
    The engine evaluates every few seconds; the chart needs one point per bin. One query."""
    query = Evaluation.objects.filter(
        plan=plan, run=run, created_at__gte=since, created_at__lt=until
    )
    if connection.vendor == "postgresql":
        # DISTINCT ON (bin): PostgreSQL keeps one row per bin, so a week of evaluations
        # every 15 s (40 000 rows) reaches Python as at most MAX_POINTS rows.
        binned = query.annotate(
            bin=Func(
                Value(timedelta(minutes=step_minutes)),
                F("created_at"),
                Value(since),
                function="date_bin",
                output_field=DateTimeField(),
            )
        )
        rows = binned.order_by("bin", "-created_at", "-pk").distinct("bin")
        return [(at, bounds) for at, bounds, _ in rows.values_list("created_at", "bounds", "bin")]
    latest: dict[int, tuple[datetime, dict[str, Any]]] = {}
    step = timedelta(minutes=step_minutes)
    for created_at, bounds in query.order_by("created_at", "pk").values_list(
        "created_at", "bounds"
    ):
        latest[int((created_at - since) / step)] = (created_at, bounds)
    return [latest[k] for k in sorted(latest)]
