"""The pointwise judge: claim samples of a split's answers, ask the plan's judge model to score
each on the plan's rubric (1-5; many calls at once, in a thread pool), and fold the scores into
the stage's aggregates as the arms' ``judge_score`` metric (per unit, for the user-level
variance), exactly once.

As the shadow pipeline: a claim moves a sample from pending to running with a lease, under the
plan's row lock, within the judge's own daily budget (``shadow.judge_budget``); completion moves
it from running to done in the same transaction as its aggregates, only while that claim is the
current one. A score the judge's answer did not give (unreadable, the call failed) is stored with
the reason and counts nowhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from turnout import judges

from migrations_app.judge.measures import SCORE
from migrations_app.models import JudgeSample, MigrationPlan, ShadowStatus
from migrations_app.outcomes import aggregation, rollup
from migrations_app.outcomes.aggregation import OutcomeFacts
from migrations_app.routing.snapshots import arm_spec
from migrations_app.shadow.calls import with_provider
from migrations_app.shadow.claims import MAX_FAILURES, claim_samples, end_claim, lost
from migrations_app.shadow.judge_budget import (
    JudgeAllowance,
    day_of,
    estimate_judge_cost,
    real_cost,
    settle,
)
from migrations_app.shadow.pipeline import NotCalled

log = logging.getLogger(__name__)

Scorer = Callable[[JudgeSample], judges.JudgeScore]


class _JudgeBudget:
    """The plan's judge budget for the day."""

    def __init__(self, plan: MigrationPlan, now: datetime) -> None:
        self.plan, self.now = plan, now
        self.allowance = JudgeAllowance(plan, now)

    def admit(self, sample: JudgeSample) -> dict[str, Any] | str:
        assert self.plan.judge_model is not None
        estimate = estimate_judge_cost(
            self.plan.judge_model, sample.request.get("messages", []), [sample.answer]
        )
        if not self.allowance.reserve(estimate):
            return f"the judge's daily budget of ${self.plan.judge_budget_usd_per_day} was spent"
        return {"cost_usd": estimate}

    def claimed(self, sample: JudgeSample) -> None:
        sample.judge_day = day_of(self.now)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.allowance.save()


def _open_plan(plan: MigrationPlan, now: datetime) -> _JudgeBudget | str:
    if plan.judge_model is None:
        return "the plan has no judge model"
    return _JudgeBudget(plan, now)


def judge_claim(sample_ids: Sequence[str], *, now: datetime | None = None) -> list[JudgeSample]:
    """Claim what can be judged now (:func:`~migrations_app.shadow.claims.claim_samples`),
    within each plan's judge budget (the others are skipped, and counted)."""
    now = now or timezone.now()
    return claim_samples(
        JudgeSample,
        sample_ids,
        now=now,
        related=("judge_model__provider",),
        open_plan=lambda plan: _open_plan(plan, now),
        dropped={},
    )


def provider_score(sample: JudgeSample) -> judges.JudgeScore:
    """Ask the plan's judge model for the sample's score, through the provider adapters and
    the provider's shared call limits (:class:`NotCalled` when no slot or no key)."""
    plan = sample.plan
    model = plan.judge_model
    assert model is not None
    return with_provider(
        model,
        arm_spec(model, {}, "none", ""),
        lambda provider: judges.score_answer(
            provider,
            sample.request.get("messages", []),
            sample.answer,
            plan.judge_rubric,
            timeout=settings.TURNOUT_SHADOW_CALL_TIMEOUT,
        ),
    )


def _end(sample: JudgeSample, **fields: Any) -> bool:
    return end_claim(JudgeSample, sample, **fields)


def judge_complete(
    done: Sequence[tuple[JudgeSample, judges.JudgeScore]], *, now: datetime | None = None
) -> int:
    """Store the scores of a task's batch in one transaction (each sample only if its claim
    is still current), fold the readable ones into the stage's ``judge_score`` per arm and
    unit, and settle the judge's spend. Returns how many were stored."""
    now = now or timezone.now()
    window = aggregation.window_start(now)
    values: list[tuple[int, OutcomeFacts, str, float]] = []
    spend: dict[tuple[int, Any], float] = {}
    stored = 0
    with transaction.atomic():
        for sample, verdict in done:
            cost = real_cost(sample.plan.judge_model, verdict.to_dict())
            if not _end(
                sample,
                status=ShadowStatus.DONE,
                score=verdict.score,
                verdict=verdict.to_dict(),
                cost_usd=cost,
                completed_at=now,
            ):
                continue
            stored += 1
            key = (sample.plan_id, sample.judge_day)  # type: ignore[attr-defined]
            spend[key] = spend.get(key, 0.0) + cost - (sample.cost_usd or 0.0)
            if verdict.score is not None and sample.stage_id is not None:
                facts = OutcomeFacts(sample.arm, sample.unit, window, 0.0, None, "", None)
                values.append((sample.stage_id, facts, SCORE, float(verdict.score)))
        rollup.aggregate([], [], values)
        for (plan_id, day), delta in sorted(spend.items()):
            settle(plan_id, day, delta)
    return stored


def judge_run(
    sample_ids: Sequence[str], *, score: Scorer = provider_score, concurrency: int | None = None
) -> dict[str, int]:
    """Claim, score and complete these samples (the calls at once in a thread pool, no ORM
    there); returns what happened to them."""
    claimed = judge_claim(sample_ids)
    counts = {"claimed": len(claimed), "done": 0, "lost": 0, "released": 0, "skipped": 0,
              "failed": 0}  # fmt: skip
    if not claimed:
        return counts
    workers = min(concurrency or settings.TURNOUT_SHADOW_CONCURRENCY, len(claimed))
    scored: list[tuple[JudgeSample, judges.JudgeScore]] = []

    def one(sample: JudgeSample) -> tuple[JudgeSample, judges.JudgeScore | Exception]:
        try:
            return sample, score(sample)
        except NotCalled as exc:
            return sample, exc
        except Exception as exc:
            log.exception("scoring judge sample %s failed", sample.pk)
            return sample, exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(one, s) for s in claimed]):
            sample, outcome = future.result()
            if isinstance(outcome, judges.JudgeScore):
                scored.append((sample, outcome))
            elif isinstance(outcome, NotCalled) and outcome.retry:
                counts["released"] += _end(sample, status=ShadowStatus.PENDING, cost_usd=None)
            elif isinstance(outcome, NotCalled):
                counts["skipped"] += _end(
                    sample, status=ShadowStatus.SKIPPED, skip_reason=outcome.reason[:200]
                )
            else:
                failures = sample.failures + 1
                status = ShadowStatus.FAILED if failures >= MAX_FAILURES else ShadowStatus.PENDING
                ended = _end(
                    sample, status=status, failures=failures,
                    skip_reason=f"the call raised {type(outcome).__name__}"[:200],
                )  # fmt: skip
                counts["failed" if status == ShadowStatus.FAILED else "released"] += ended
    stored = judge_complete(scored)
    counts["done"] += stored
    counts["lost"] += len(scored) - stored
    return counts


def judge_sweep(*, now: datetime | None = None, limit: int = 1000) -> list[str]:
    """Samples whose task was lost or whose worker died mid-call: their ids, to run again
    (as shadow samples: :func:`~migrations_app.shadow.claims.lost`)."""
    return lost(JudgeSample, now=now or timezone.now(), limit=limit)


def judge_purge(*, now: datetime | None = None, batch: int = 5000) -> int:
    """Delete judge samples (prompts and answers) past their plan's shadow retention."""
    now = now or timezone.now()
    deleted = 0
    for plan_id, days in MigrationPlan.objects.values_list("pk", "shadow_retention_days"):
        old = JudgeSample.objects.filter(plan_id=plan_id, created_at__lt=now - timedelta(days=days))
        while True:
            ids = list(old.values_list("pk", flat=True)[:batch])
            if not ids:
                break
            deleted += JudgeSample.objects.filter(pk__in=ids).delete()[0]
    return deleted
