"""The shadow pipeline: claim samples, call the candidate for each (many at a time, in a thread
pool: the calls wait on the network, so one task runs many instead of one blocking call per
worker process), compare the answers and fold the results into the aggregates.

Exactly once: completion moves a sample from running to done in the same transaction as its
aggregates, and only for the claim that is still current (``claims``), so a sample is
compared and counted once even when a worker dies mid-call. The call and the comparison come
in as functions (``calls.provider_call``, ``judge.compare_answers`` in production).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from migrations_app.models import (
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.outcomes import aggregation, metric_rollup, rollup
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.outcomes.event_checks import (
    storable,
)
from migrations_app.outcomes.store import fast_path, pg_cursor
from migrations_app.plans.catalog import cost_usd
from migrations_app.shadow.claims import (
    shadow_claim,
    shadow_fail,
    shadow_release,
    shadow_retry_later,
    shadow_skip,
)
from migrations_app.shadow.judge_budget import real_cost, settle
from migrations_app.shadow.redaction import redactor
from migrations_app.shadow.verdicts import judge_counts, paired_values

log = logging.getLogger(__name__)


# Answers stored per transaction as a task's calls come back.
COMPLETE_BATCH = 16


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """What the candidate's call gave (a provider adapter's result, normalised)."""

    text: str
    latency_ms: float
    ttft_ms: float | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None  # the answer checks' truncated

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "error": self.error,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
        }


Caller = Callable[[ShadowSample], CandidateResult]


Comparer = Callable[[ShadowSample, CandidateResult], dict[str, Any]]


def shadow_complete_many(
    completed: Sequence[tuple[ShadowSample, CandidateResult, Mapping[str, Any]]],
    *,
    now: datetime | None = None,
) -> int:
    """Store the candidates' answers and comparisons of a task's batch in one transaction:
    each sample is stored if its claim is still current, and only those are aggregated (one
    pass over the windows and one pair-aggregate update per stage). Returns how many were
    stored.

    Should the batch's transaction fail (one answer the database refuses), each sample is
    stored in a transaction of its own, so that the others' answers, paid for, are kept; the
    sample that still fails counts a failure (see :data:`MAX_FAILURES`)."""
    now = now or timezone.now()
    try:
        return _complete(completed, now)
    except Exception:
        if len(completed) == 1:
            log.exception("storing shadow sample %s failed", completed[0][0].pk)
            shadow_retry_later(completed[0][0], "its answer could not be stored")
            return 0
        log.warning("storing a batch of shadow answers failed; storing one by one", exc_info=True)
    stored = 0
    for one in completed:
        stored += shadow_complete_many([one], now=now)
    return stored


def _complete(
    completed: Sequence[tuple[ShadowSample, CandidateResult, Mapping[str, Any]]], now: datetime
) -> int:
    window = aggregation.window_start(now)
    facts: list[tuple[int, OutcomeFacts]] = []
    pairs: dict[int, list[tuple[bool, bool, Mapping[str, Any]]]] = {}
    paired: dict[int, list[tuple[str, Mapping[str, tuple[float, float]]]]] = {}
    judge_spend: dict[tuple[int, Any], float] = {}
    with transaction.atomic():
        # In key order: two workers' batches locking the same rows in different orders
        # would deadlock.
        ordered = sorted(completed, key=lambda done: done[0].pk)
        answers = []
        for sample, result, _ in ordered:
            plan = sample.plan
            cost = cost_usd(plan.candidate_model, result.input_tokens, result.output_tokens)
            redact = redactor(plan.redaction_patterns or [])
            answers.append(({**result.to_dict(), "text": storable(redact(result.text))}, cost))
        stored = _store_answers(ordered, answers, now)
        for (sample, result, comparison), (_, cost) in zip(ordered, answers, strict=True):
            if sample.pk not in stored:
                continue
            plan = sample.plan
            facts.append(
                (
                    sample.stage_id,
                    OutcomeFacts(
                        arm="candidate",
                        unit=sample.unit,
                        window=window,
                        latency_ms=result.latency_ms,
                        ttft_ms=result.ttft_ms,
                        error=result.error or "",
                        cost_usd=cost,
                    ),
                )
            )
            pairs.setdefault(sample.stage_id, []).append(
                (bool(sample.control.get("error")), bool(result.error), comparison)
            )
            values = paired_values(comparison)
            if values:
                paired.setdefault(sample.stage_id, []).append((sample.unit, values))
            reserved = getattr(sample, "judge_reserved", None)
            if reserved is not None:  # the claim booked a judge call: book its real cost
                key = (plan.pk, sample.judge_day)  # type: ignore[attr-defined]
                verdict = comparison.get("judge")
                spent = real_cost(plan.judge_model, verdict if isinstance(verdict, dict) else None)
                judge_spend[key] = judge_spend.get(key, 0.0) + spent - reserved
        rollup.aggregate(facts, [])
        for stage_id in sorted(pairs):  # one lock order for every worker
            _add_pairs(stage_id, pairs[stage_id], paired.get(stage_id, []))
        for (plan_id, day), delta in sorted(judge_spend.items()):
            settle(plan_id, day, delta)
    return len(facts)


def _store_answers(
    ordered: Sequence[tuple[ShadowSample, CandidateResult, Mapping[str, Any]]],
    answers: Sequence[tuple[dict[str, Any], float | None]],
    now: datetime,
) -> set[str]:
    """Store each sample's answer, comparison and cost under its claim (running, same
    attempt): the keys stored. The rows are locked in key order first (an UPDATE ... FROM
    locks in its join's order), then stored in one UPDATE on PostgreSQL (one per sample was
    a tenth of a replay worker's CPU, the same code shape); one UPDATE per sample elsewhere."""
    if not fast_path():
        stored = set()
        for (sample, _, comparison), (candidate, cost) in zip(ordered, answers, strict=True):
            if ShadowSample.objects.filter(
                pk=sample.pk, status=ShadowStatus.RUNNING, attempts=sample.attempts
            ).update(
                status=ShadowStatus.DONE,
                candidate=candidate,
                comparison=dict(comparison),
                candidate_cost_usd=cost,
                completed_at=now,
                lease_until=None,
            ):
                stored.add(sample.pk)
        return stored
    rows = [
        [sample.pk, sample.attempts, candidate, dict(comparison), cost]
        for (sample, _, comparison), (candidate, cost) in zip(ordered, answers, strict=True)
    ]
    table = connection.ops.quote_name(ShadowSample._meta.db_table)
    with pg_cursor() as cursor:
        cursor.execute(
            f"SELECT sample_id FROM {table} WHERE sample_id = ANY(%s) "
            "ORDER BY sample_id FOR UPDATE",
            [[row[0] for row in rows]],
        )
        cursor.execute(
            f"UPDATE {table} AS t SET status = %s, candidate = v.candidate, "
            "comparison = v.comparison, candidate_cost_usd = v.cost, completed_at = %s, "
            "lease_until = NULL FROM (SELECT r->>0 AS key, (r->>1)::int AS attempts, "
            "r->2 AS candidate, r->3 AS comparison, (r->>4)::float8 AS cost "
            "FROM jsonb_array_elements(%s::jsonb) AS r) AS v "
            "WHERE t.sample_id = v.key AND t.status = %s AND t.attempts = v.attempts "
            "RETURNING t.sample_id",
            [
                ShadowStatus.DONE,
                now,
                orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS).decode(),
                ShadowStatus.RUNNING,
            ],
        )
        return {row[0] for row in cursor.fetchall()}


SCORE_KEYS = (
    "exact_match",
    "normalized_match",
    "json_valid",
    "similarity",
    "length_ratio",
    "refusal",
    "judge_score",  # +1 the judge preferred the candidate, 0 a tie, -1 control
)


def _add_pairs(
    stage_id: int,
    pairs: Sequence[tuple[bool, bool, Mapping[str, Any]]],
    paired: Sequence[tuple[str, Mapping[str, tuple[float, float]]]] = (),
) -> None:
    """Fold (control failed, candidate failed, comparison) pairs into the stage's paired
    aggregate: the failure table, each score's count and sum, the judge's counts
    (``judge_<count>``), and ``metrics``: the paired per-request metrics (unit, {metric:
    (control, candidate)}) as ``PairedSums`` with their unit-level sums."""
    ShadowAggregate.objects.get_or_create(stage_id=stage_id)
    row = ShadowAggregate.objects.select_for_update().get(stage_id=stage_id)
    data = dict(row.data)
    if paired:
        deltas = metric_rollup.paired_deltas(stage_id, paired)
        data["metrics"] = metric_rollup.merge_paired_json(data.get("metrics"), deltas)
    for control_failed, candidate_failed, comparison in pairs:
        data["n"] = data.get("n", 0) + 1
        key = {
            (False, False): "neither",
            (True, False): "control_only",
            (False, True): "candidate_only",
            (True, True): "both",
        }[(control_failed, candidate_failed)]
        data[key] = data.get(key, 0) + 1
        for name, count in judge_counts(comparison).items():
            data[f"judge_{name}"] = data.get(f"judge_{name}", 0) + count
        for name in SCORE_KEYS:
            value = comparison.get(name)
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, int | float):
                data[f"{name}_n"] = data.get(f"{name}_n", 0) + 1
                data[f"{name}_sum"] = data.get(f"{name}_sum", 0.0) + float(value)
    row.data = data
    row.save(update_fields=["data", "updated_at"])


class NotCalled(Exception):
    """The candidate was not called: ``retry`` says whether a later attempt may be
    (no free call slot) or not (the workers cannot reach the candidate at all)."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


class Refused(Exception):
    """The sample's own request may not be sent (e.g. params the contract does not allow,
    stored before ingest checked them): it fails without a call."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _WentWrong:
    """An attempt that raised something unexpected (a bug, a vendor SDK's TypeError)."""

    reason: str


def shadow_run(
    sample_ids: Sequence[str], *, call: Caller, compare: Comparer, concurrency: int | None = None
) -> dict[str, int]:
    """Claim, call the candidate and compare for each sample (many at once, in a thread pool:
    the calls wait on the network), complete each in this thread's transaction."""
    claimed = shadow_claim(sample_ids)
    counts = {
        "claimed": len(claimed),
        "done": 0,
        "lost": 0,
        "released": 0,
        "skipped": 0,
        "failed": 0,
    }
    if not claimed:
        return counts
    workers = min(concurrency or settings.TURNOUT_SHADOW_CONCURRENCY, len(claimed))

    # No ORM in the pool's threads: each would open a database connection of its own. The
    # call and the comparison read only what the claim loaded.
    def one(
        sample: ShadowSample,
    ) -> tuple[ShadowSample, CandidateResult | NotCalled | Refused | _WentWrong, dict[str, Any]]:
        try:
            result = call(sample)
        except (NotCalled, Refused) as exc:
            return sample, exc, {}
        except Exception as exc:
            # Whatever one sample's call raised, the batch's other answers are kept: this
            # sample alone is retried later, a bounded number of times.
            log.exception("calling the candidate for shadow sample %s failed", sample.pk)
            return sample, _WentWrong(f"the call raised {type(exc).__name__}: {exc}"), {}
        try:
            return sample, result, compare(sample, result)
        except Exception:
            # The answer is paid for and counts; only its scores are missing. A bug in a
            # comparison must not drop the batch's other answers or hold the samples.
            log.exception("comparing shadow sample %s failed", sample.pk)
            return sample, result, {"error": "comparison failed"}

    completed: list[tuple[ShadowSample, CandidateResult, Mapping[str, Any]]] = []

    def flush() -> None:
        done = shadow_complete_many(completed)
        counts["done"] += done
        counts["lost"] += len(completed) - done
        completed.clear()

    def handle(
        sample: ShadowSample,
        result: CandidateResult | NotCalled | Refused | _WentWrong,
        comparison: dict[str, Any],
    ) -> None:
        if isinstance(result, NotCalled):
            if result.retry:
                counts["released"] += shadow_release(sample)
            else:
                counts["skipped"] += shadow_skip(sample, result.reason)
        elif isinstance(result, Refused):
            counts["failed"] += shadow_fail(sample, result.reason)
        elif isinstance(result, _WentWrong):
            ended = shadow_retry_later(sample, result.reason)
            if ended:
                counts[ended] += 1
        else:
            completed.append((sample, result, comparison))

    pool = ThreadPoolExecutor(max_workers=workers)
    futures = {pool.submit(one, sample): sample for sample in claimed}
    handled: set[Any] = set()
    try:
        # Stored as they come back, a few at a time: one transaction per few answers, and
        # one slow call holds back only the answers that arrive after it.
        for future in as_completed(futures):
            handled.add(future)
            handle(*future.result())
            if len(completed) >= COMPLETE_BATCH:
                flush()
    finally:
        # On the task's soft time limit: keep what came back, start no queued call and give
        # its sample back (it was never called), do not wait for the calls in flight (their
        # leases expire and the sweeper hands them on).
        pool.shutdown(wait=False, cancel_futures=True)
        for future, sample in futures.items():
            if future.cancelled():
                counts["released"] += shadow_release(sample)
            elif future.done() and future not in handled:
                handle(*future.result())
        flush()
    return counts
