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
from migrations_app.shadow.claims import MAX_FAILURES, claimable_at, lost
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


def judge_claim(sample_ids: Sequence[str], *, now: datetime | None = None) -> list[JudgeSample]:
    """Claim what can be judged now: pending samples, and running ones whose lease expired,
    within each plan's judge budget (the others are skipped, and counted)."""
    now = now or timezone.now()
    claimable = claimable_at(now)
    by_plan: dict[int, list[str]] = {}
    for pk, plan_id in JudgeSample.objects.filter(claimable, pk__in=sample_ids).values_list(
        "pk", "plan_id"
    ):
        by_plan.setdefault(plan_id, []).append(pk)
    claimed: list[JudgeSample] = []
    lease_seconds = settings.TURNOUT_SHADOW_LEASE_SECONDS
    for plan_id, ids in sorted(by_plan.items()):
        with transaction.atomic():
            plan = (
                MigrationPlan.objects.select_for_update(of=("self",))
                .select_related("judge_model__provider")
                .filter(pk=plan_id)
                .first()
            )
            if plan is None:
                continue
            if plan.judge_model is None:
                JudgeSample.objects.filter(claimable, pk__in=ids).update(
                    status=ShadowStatus.SKIPPED, skip_reason="the plan has no judge model",
                    lease_until=None,
                )  # fmt: skip
                continue
            budget = JudgeAllowance(plan, now)
            for sample in JudgeSample.objects.filter(claimable, pk__in=ids).order_by("pk"):
                failures = sample.failures + (sample.status == ShadowStatus.RUNNING)
                if failures >= MAX_FAILURES:
                    JudgeSample.objects.filter(
                        claimable, pk=sample.pk, attempts=sample.attempts
                    ).update(
                        status=ShadowStatus.FAILED, failures=failures, lease_until=None,
                        skip_reason=f"{failures} attempts went wrong; the last one's worker "
                        "stopped mid-call",
                    )  # fmt: skip
                    continue
                estimate = estimate_judge_cost(
                    plan.judge_model, sample.request.get("messages", []), [sample.answer]
                )
                if not budget.reserve(estimate):
                    JudgeSample.objects.filter(pk=sample.pk).update(
                        status=ShadowStatus.SKIPPED, lease_until=None,
                        skip_reason=f"the judge's daily budget of "
                        f"${plan.judge_budget_usd_per_day} was spent",
                    )  # fmt: skip
                    continue
                attempts = sample.attempts + 1
                lease = now + timedelta(seconds=lease_seconds)
                won = JudgeSample.objects.filter(
                    claimable, pk=sample.pk, attempts=sample.attempts
                ).update(
                    status=ShadowStatus.RUNNING, attempts=attempts, failures=failures,
                    lease_until=lease, cost_usd=estimate,
                )  # fmt: skip
                if won:
                    sample.status, sample.attempts, sample.failures = (
                        ShadowStatus.RUNNING, attempts, failures,
                    )  # fmt: skip
                    sample.lease_until, sample.cost_usd, sample.plan = lease, estimate, plan
                    sample.judge_day = day_of(now)  # type: ignore[attr-defined]
                    claimed.append(sample)
            budget.save()
    return claimed


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
    return bool(
        JudgeSample.objects.filter(
            pk=sample.pk, status=ShadowStatus.RUNNING, attempts=sample.attempts
        ).update(lease_until=None, **fields)
    )


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
