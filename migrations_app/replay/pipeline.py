"""The replay's calls: claim a batch, call control (when needed) and the candidate for each
(many at once in a thread pool, as the shadow pipeline does: the calls wait on the network),
score the answers, and store each unit's result under its claim.

A provider outage is an outage, not a failing candidate: an answer whose error is not the
candidate's own (``invalid_output``, ``empty_output`` are; a timeout, a 5xx, a rate limit are
not) is retried (``replay_retry_later``) and after :data:`MAX_FAILURES` attempts reads "not
evaluated", counted in no metric. The call and the judge come in as functions
(``shadow.calls.arm_call``, ``shadow.judge.judge_pair`` in production).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from turnout.checks import CHECKED_ERRORS, schema_validator
from turnout.contract import TRANSIENT_KINDS

from migrations_app.models import MigrationPlan, ReplayCall
from migrations_app.plans.catalog import cost_usd
from migrations_app.replay import claims
from migrations_app.replay.claims import Pair, needs_control
from migrations_app.replay.metrics import agreement_values, answer_values
from migrations_app.shadow.judge_budget import real_cost
from migrations_app.shadow.pipeline import COMPLETE_BATCH, CandidateResult, NotCalled, Refused

log = logging.getLogger(__name__)

Caller = Callable[[MigrationPlan, str, Mapping[str, Any]], CandidateResult]
Judge = Callable[[Pair, CandidateResult], "dict[str, Any] | None"]


class Outage(Exception):
    """The provider failed the call (not the model's answer): ``transient`` says whether
    another attempt may go through."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(slots=True)
class UnitResult:
    """One (item, repeat): the answers, the values per arm, the judge's verdict, the cost."""

    candidate: CandidateResult
    control: CandidateResult | None
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    judge: dict[str, Any] | None = None
    cost: float = 0.0


def _checked(arm: str, result: CandidateResult) -> CandidateResult:
    if result.error is not None and result.error not in CHECKED_ERRORS:
        raise Outage(f"{arm}: {result.error}", transient=result.error in TRANSIENT_KINDS)
    return result


def run_unit(call: ReplayCall, *, call_arm: Caller, judge: Judge) -> UnitResult:
    """Control (when needed) then the candidate on the call's item, and their values. Pure of
    the database: reads only what the claim loaded."""
    run = call.replay
    plan = run.plan
    item = call.item
    control = None
    if needs_control(run, call):
        control = _checked("control", call_arm(plan, "control", item.request))
    result = _checked("candidate", call_arm(plan, "candidate", item.request))
    json_expected = item.request.get("json_schema") is not None
    schema = schema_validator(plan.answer_schema)
    reference = item.reference

    def values_of(answer: CandidateResult) -> dict[str, float]:
        return answer_values(
            answer.text, error=answer.error, finish_reason=answer.finish_reason,
            json_expected=json_expected, schema=schema, reference=reference,
        )  # fmt: skip

    unit = UnitResult(result, control)
    unit.values["candidate"] = values_of(result)
    control_text = control.text if control is not None else item.control_answer
    control_error = control.error if control is not None else None
    if control is not None:
        unit.values["control"] = values_of(control)
    elif control_text is not None:
        # A recorded answer: its values the same way (no finish reason was recorded).
        recorded = CandidateResult(text=control_text, latency_ms=0.0)
        unit.values["control"] = values_of(recorded)
    if control_text is not None and control_error is None and not result.error:
        unit.values["candidate"].update(
            agreement_values(control_text, result.text, json_expected=json_expected)
        )
        pair = Pair(plan, item.request, {"text": control_text}, f"replay-{run.pk}-{call.pk}")
        verdict = judge(pair, result)
        if verdict is not None:
            unit.judge = verdict
            if verdict.get("score") is not None:
                unit.values["candidate"]["judge_preference"] = float(verdict["score"])
    cost = cost_usd(plan.candidate_model, result.input_tokens, result.output_tokens) or 0.0
    if control is not None:
        cost += cost_usd(plan.control_model, control.input_tokens, control.output_tokens) or 0.0
    if unit.judge is not None and plan.judge_model is not None:
        cost += real_cost(plan.judge_model, unit.judge)
    unit.cost = cost
    return unit


def _answered(call: ReplayCall, unit: UnitResult) -> claims.Answered:
    answer = {"candidate": unit.candidate.to_dict()}
    if unit.control is not None:
        answer["control"] = unit.control.to_dict()
    return claims.Answered(call, answer, unit.values, unit.judge, unit.cost)


def replay_run_calls(
    call_ids: Sequence[int], *, call_arm: Caller, judge: Judge, concurrency: int | None = None
) -> dict[str, int]:
    """Claim, call and score each call (many at once), store each under its claim."""
    claimed = claims.replay_claim(call_ids)
    counts = {"claimed": len(claimed), "done": 0, "lost": 0, "released": 0, "failed": 0}
    if not claimed:
        return counts
    workers = min(concurrency or settings.TURNOUT_SHADOW_CONCURRENCY, len(claimed))

    def one(call: ReplayCall) -> tuple[ReplayCall, UnitResult | Exception]:
        try:
            return call, run_unit(call, call_arm=call_arm, judge=judge)
        except (NotCalled, Refused, Outage) as exc:
            return call, exc
        except Exception as exc:
            # One unit's bug is retried a bounded number of times; the batch goes on.
            log.exception("replay call %s failed", call.pk)
            return call, Outage(f"the call raised {type(exc).__name__}: {exc}", transient=True)

    completed: list[tuple[ReplayCall, UnitResult]] = []

    def flush() -> None:
        # A few answers per transaction, as the shadow pipeline stores them (COMPLETE_BATCH).
        if not completed:
            return
        now = timezone.now()
        # In key order (replay_complete_many locks them so), as replay_cancel locks them:
        # two transactions locking the same rows in different orders deadlock.
        with transaction.atomic():
            stored = claims.replay_complete_many(
                [_answered(call, unit) for call, unit in completed], now=now
            )
        counts["done"] += len(stored)
        counts["lost"] += len(completed) - len(stored)
        completed.clear()

    def handle(call: ReplayCall, outcome: UnitResult | Exception) -> None:
        if isinstance(outcome, UnitResult):
            completed.append((call, outcome))
            if len(completed) >= COMPLETE_BATCH:
                flush()
        elif isinstance(outcome, NotCalled) and outcome.retry:
            counts["released"] += claims.replay_release(call)
        elif isinstance(outcome, Outage) and outcome.transient:
            ended = claims.replay_retry_later(call, outcome.reason)
            if ended:
                counts[ended] += 1
        else:
            reason = getattr(outcome, "reason", str(outcome))
            counts["failed"] += claims.replay_not_evaluated(call, reason)

    pool = ThreadPoolExecutor(max_workers=workers)
    futures = {pool.submit(one, call): call for call in claimed}
    handled: set[Any] = set()
    try:
        for future in as_completed(futures):
            handled.add(future)
            handle(*future.result())
    finally:
        # On the task's soft time limit: keep what came back, give back what never started;
        # the calls in flight keep their leases and the sweep hands them on.
        pool.shutdown(wait=False, cancel_futures=True)
        for future, call in futures.items():
            if future.cancelled():
                counts["released"] += claims.replay_release(call)
            elif future.done() and future not in handled:
                handle(*future.result())
        flush()
    return counts
