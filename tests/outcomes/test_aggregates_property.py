"""Stored aggregates equal a recomputation from the raw rows, whatever the batching and order.

Hypothesis draws an event stream (a few units on both arms, errors of several kinds, unknown
usage, missing TTFT, zero latencies, feedback before and after its outcome and for decisions
never reported, duplicates), cuts it into batches and ingests them in a random order. The
recomputation reads only the raw Outcome and Feedback rows and builds every figure directly
(per-unit totals, then ``ClusterSums.from_units``), not through the ingest code's deltas.
Both write paths run: PostgreSQL's fast path and the portable one SQLite uses.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrations_app.guardrails.stats import CLUSTER_MOMENTS, ArmAggregates, Buckets, ClusterSums
from migrations_app.models import Feedback, Outcome, StageAggregate, UnitTotals, WindowAggregate
from migrations_app.outcomes import aggregate_json, feedback, ingest, store
from migrations_app.outcomes.segment_rollup import catch_up
from tests.outcomes.conftest import Everyone, outcome, split_plan

pytestmark = pytest.mark.django_db

KINDS = ["timeout", "rate_limited", "server_error", "content_filter"]

outcome_st = st.fixed_dictionaries(
    {
        "unit": st.integers(0, 4),
        "arm": st.sampled_from(["control", "candidate"]),
        "minute": st.integers(0, 3),
        "second": st.floats(0, 59.999),
        "latency_ms": st.one_of(st.just(0.0), st.floats(0.001, 600_000)),
        "ttft_ms": st.one_of(st.none(), st.floats(0.0, 60_000)),
        "error": st.one_of(st.none(), st.sampled_from(KINDS)),
        # within both arms' model limits (GPT-4o: 128k in, 16,384 out)
        "usage": st.one_of(st.none(), st.tuples(st.integers(0, 128_000), st.integers(0, 16_384))),
        # feedback: none, or (scale, score, sent before its outcome?)
        "feedback": st.one_of(
            st.none(),
            st.tuples(st.just("thumbs"), st.sampled_from([-1, 1]), st.booleans()),
            st.tuples(st.just("five"), st.integers(1, 5), st.booleans()),
        ),
    }
)


def build_stream(plan: Any, draws: list[dict[str, Any]], now: float) -> list[tuple[str, dict]]:
    """(endpoint, event) items; feedback sent "before" is placed ahead of every outcome."""
    early: list[tuple[str, dict]] = []
    items: list[tuple[str, dict]] = []
    base = math.floor(now / 60) * 60 - 240  # four whole minutes back, inside the retention
    for d in draws:
        tokens = d["usage"] or (None, None)
        event = outcome(
            plan,
            arm=d["arm"],
            unit=f"u{d['unit']}",
            ts=base + 60 * d["minute"] + d["second"],
            latency_ms=d["latency_ms"],
            ttft_ms=d["ttft_ms"],
            error=d["error"],
            input_tokens=tokens[0],
            output_tokens=tokens[1],
        )
        items.append(("outcomes", event))
        if d["feedback"] is not None:
            scale, score, before = d["feedback"]
            fb = {"id": uuid.uuid4().hex, "decision_id": event["decision_id"], "score": score,
                  "scale": scale, "ts": now - 1}  # fmt: skip
            (early if before else items).append(("feedback", fb))
    # feedback for a decision that is never reported: stored, held, never counted
    early.append(("feedback", {"id": uuid.uuid4().hex, "decision_id": "never", "score": 1,
                               "ts": now - 1}))  # fmt: skip
    return early + items


def recompute(plan: Any) -> tuple[dict, dict]:
    """Per (stage, window, arm) and per (stage, arm) aggregates from the raw rows only."""
    outcomes = list(Outcome.objects.filter(plan=plan, stage__isnull=False))
    by_decision = {}
    for o in sorted(outcomes, key=lambda o: (o.ts, o.pk)):
        by_decision.setdefault(o.decision_id, o)
    feedback = [
        (by_decision[f.decision_id], f.score)
        for f in Feedback.objects.filter(outcome__isnull=False)
        if f.decision_id in by_decision
    ]
    windows: dict[tuple, list] = defaultdict(list)
    window_scores: dict[tuple, list] = defaultdict(list)
    units: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        windows[(o.stage_id, o.window, o.arm)].append(o)
        u = units[(o.stage_id, o.arm)][o.unit]
        u.append(("outcome", o))
    for o, score in feedback:
        window_scores[(o.stage_id, o.window, o.arm)].append(score)
        units[(o.stage_id, o.arm)][o.unit].append(("feedback", score))

    per_window = {}
    for key in set(windows) | set(window_scores):
        rows = windows.get(key, [])
        latencies = [o.latency_ms for o in rows]
        ttfts = [o.ttft_ms for o in rows if o.ttft_ms is not None]
        costs = [o.cost_usd for o in rows if o.cost_usd is not None]
        scores = window_scores.get(key, [])
        kinds: dict[str, int] = defaultdict(int)
        for o in rows:
            if o.error:
                kinds[o.error] += 1
        per_window[key] = {
            "requests": len(rows),
            "errors": sum(kinds.values()),
            "errors_by_kind": dict(kinds),
            "latency": Buckets.from_values(latencies) if latencies else Buckets(),
            "latency_sum": math.fsum(latencies),
            "latency_log_sum": math.fsum(math.log(v) for v in latencies if v > 0),
            "ttft": Buckets.from_values(ttfts) if ttfts else Buckets(),
            "ttft_sum": math.fsum(ttfts),
            "ttft_log_sum": math.fsum(math.log(v) for v in ttfts if v > 0),
            "latency_log1p_n": len(latencies),
            "latency_log1p_sum": math.fsum(math.log1p(v) for v in latencies),
            "latency_log1p_sum_sq": math.fsum(math.log1p(v) ** 2 for v in latencies),
            "ttft_log1p_n": len(ttfts),
            "ttft_log1p_sum": math.fsum(math.log1p(v) for v in ttfts),
            "ttft_log1p_sum_sq": math.fsum(math.log1p(v) ** 2 for v in ttfts),
            "cost_n": len(costs),
            "cost_sum": math.fsum(costs),
            "cost_sum_sq": math.fsum(c * c for c in costs),
            "feedback_n": len(scores),
            "feedback_sum": math.fsum(scores),
            "feedback_sum_sq": math.fsum(s * s for s in scores),
        }
    per_stage = {}
    for (stage_id, arm), members in units.items():
        totals = []
        for items in members.values():
            outs = [o for kind, o in items if kind == "outcome"]
            scores = [s for kind, s in items if kind == "feedback"]
            costs = [o.cost_usd for o in outs if o.cost_usd is not None]
            ttfts = [o.ttft_ms for o in outs if o.ttft_ms is not None]
            totals.append(
                (len(outs), sum(1 for o in outs if o.error), len(costs), math.fsum(costs),
                 len(scores), math.fsum(scores), math.fsum(math.log1p(o.latency_ms) for o in outs),
                 len(ttfts), math.fsum(math.log1p(v) for v in ttfts))
            )  # fmt: skip
        req, err, cost_n, cost_sum, fb_n, fb_sum, lat, ttft_n, ttft = (
            list(c) for c in zip(*totals, strict=True)
        )
        per_stage[(stage_id, arm)] = {
            "error_clusters": ClusterSums.from_units(err, req),
            "cost_clusters": ClusterSums.from_units(cost_sum, cost_n),
            "feedback_clusters": ClusterSums.from_units(fb_sum, fb_n),
            "feedback_rate_clusters": ClusterSums.from_units(fb_n, req),
            "latency_clusters": ClusterSums.from_units(lat, req),
            "ttft_clusters": ClusterSums.from_units(ttft, ttft_n),
            "unit_totals": sorted(
                (unit, (len([1 for k, _ in items if k == "outcome"])))
                for unit, items in members.items()
            ),
        }
    return per_window, per_stage


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def assert_clusters(stored: ClusterSums, expected: ClusterSums) -> None:
    assert stored.units == expected.units
    for name in CLUSTER_MOMENTS:
        assert close(getattr(stored, name), getattr(expected, name)), (name, stored, expected)


def check(plan: Any) -> None:
    catch_up()
    per_window, per_stage = recompute(plan)
    stored_windows = {
        (w.stage_id, w.window, w.arm): w for w in WindowAggregate.objects.filter(stage__plan=plan)
    }
    assert set(stored_windows) == set(per_window)
    for key, expected in per_window.items():
        row = stored_windows[key]
        agg = aggregate_json.from_json(row.data)
        for name in ("requests", "errors", "cost_n", "feedback_n", "latency_log1p_n",
                     "ttft_log1p_n"):  # fmt: skip
            assert getattr(agg, name) == expected[name], (key, name)
        assert {k: v for k, v in agg.errors_by_kind.items() if v} == expected["errors_by_kind"]
        for name in ("latency", "ttft"):
            stored, want = getattr(agg, name), expected[name]
            assert stored.zero_count == want.zero_count
            assert {k: v for k, v in stored.counts.items() if v} == dict(want.counts)
        for name in ("latency_sum", "latency_log_sum", "ttft_sum", "ttft_log_sum", "cost_sum", "cost_sum_sq",
                     "feedback_sum", "feedback_sum_sq", "latency_log1p_sum", "latency_log1p_sum_sq",
                     "ttft_log1p_sum", "ttft_log1p_sum_sq"):  # fmt: skip
            assert close(getattr(agg, name), expected[name]), (key, name)
        # the columns charts group by in SQL copy the data
        assert (row.requests, row.errors, row.cost_n, row.feedback_n) == (
            agg.requests, agg.errors, agg.cost_n, agg.feedback_n,
        )  # fmt: skip
        assert close(row.latency_sum, agg.latency_sum) and close(row.cost_sum, agg.cost_sum)
        assert close(row.feedback_sum, agg.feedback_sum)

    stages = {(s.stage_id, s.arm): s for s in StageAggregate.objects.filter(stage__plan=plan)}
    assert set(stages) == set(per_stage)
    for key, expected in per_stage.items():
        stage = aggregate_json.from_json(stages[key].data)
        windows = ArmAggregates.merge(
            aggregate_json.from_json(w.data)
            for k, w in stored_windows.items()
            if (k[0], k[2]) == key
        )
        # the stage row is the running sum of its windows
        assert stage.requests == windows.requests == stages[key].requests
        assert stage.latency == windows.latency and stage.errors_by_kind == windows.errors_by_kind
        for name in ("error_clusters", "cost_clusters", "feedback_clusters",
                     "feedback_rate_clusters", "latency_clusters", "ttft_clusters"):  # fmt: skip
            assert_clusters(getattr(stage, name), expected[name])
            assert_clusters(getattr(windows, name), expected[name])
        stored_units = sorted(
            UnitTotals.objects.filter(stage_id=key[0], arm=key[1]).values_list("unit", "requests")
        )
        assert stored_units == expected["unit_totals"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "portable-path"])
def test_aggregates_equal_a_recomputation_from_raw_rows(fast: bool, monkeypatch) -> None:
    monkeypatch.setattr(store, "FAST_PATH", fast)

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        draws=st.lists(outcome_st, min_size=1, max_size=30),
        data=st.data(),
    )
    def run(draws: list[dict[str, Any]], data: st.DataObject) -> None:
        plan = split_plan()
        stream = build_stream(plan, draws, time.time())
        # duplicates: some events sent again, later in the stream
        repeats = data.draw(st.lists(st.sampled_from(stream), max_size=5))
        stream = stream + repeats
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=6)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        batches = []
        for piece in pieces:
            for kind in ("outcomes", "feedback"):
                events = [e for k, e in piece if k == kind]
                if events:
                    batches.append((kind, events))
        order = data.draw(st.permutations(range(len(batches))))
        for i in order:
            kind, events = batches[i]
            if kind == "outcomes":
                result = ingest.outcomes_ingest(identity=Everyone(), payload={"events": events})
            else:
                result = feedback.feedback_ingest(identity=Everyone(), payload={"events": events})
            assert not result.rejected
        feedback.apply_held_feedback()

        distinct = {e["id"] for k, e in stream if k == "outcomes"}
        assert Outcome.objects.filter(plan=plan).count() == len(distinct)
        check(plan)

    run()
