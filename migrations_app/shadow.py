"""Shadow mode: the candidate answers a sample of production requests in the background.

Flow: the SDK (or ``client.complete()``) posts a sample (the request, control's answer and
its metrics) to ``/api/v1/shadow-samples``; :func:`shadow_samples_ingest` redacts and stores
it once (the client-made id is the primary key) and enqueues its processing after commit;
:func:`shadow_run` claims samples, calls the candidate through the provider adapters many at
a time (the calls wait on the network, so a thread pool inside one task, not one blocking
call per worker process), compares the answers and folds the result into the aggregates.

Exactly once: a claim moves a sample from pending to running with a lease (compare-and-set),
completion moves it from running to done in the same transaction as its aggregates, and
only for the claim that is still current. A worker killed mid-call leaves a running sample
whose lease expires; the sweeper hands it to another worker, and the dead worker's result,
should it ever arrive, matches no row.

Budget: a plan may cap its shadow spend per UTC day. Claims are serialised per plan (the
plan's row lock) and reserve each call's estimated cost, so concurrent workers cannot
overshoot the cap by more than one request's cost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone
from turnout import compare, providers
from turnout.client import ERROR_KINDS
from turnout.providers import Provider
from turnout.routing import ArmSpec

from migrations_app import aggregation, ingest, limits, metrics, plans
from migrations_app.aggregation import OutcomeFacts
from migrations_app.batches import (
    MAX_ID_LENGTH,
    MAX_MS,
    MAX_UNIT_LENGTH,
    IngestResult,
    Invalid,
    Rejection,
    check_batch_size,
    events_of,
    integer,
    number,
    text,
    timestamp,
)
from migrations_app.models import (
    AuditEvent,
    MigrationPlan,
    ModelSpec,
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.selectors import plan_infos
from migrations_app.snapshots import arm_spec

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_CONTENT_CHARS = 100_000
# Answers stored per transaction as a task's calls come back.
COMPLETE_BATCH = 16
ROLES = frozenset({"system", "user", "assistant"})

# Always masked before a sample is stored: what leaks most often into prompts.
DEFAULT_REDACTIONS: tuple[tuple[str, str], ...] = (
    (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", "[email]"),
    (r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}", "[secret]"),  # OpenAI, Anthropic (sk-ant-…)
    (r"\bAKIA[0-9A-Z]{16}\b", "[secret]"),  # AWS access key id
    (r"\bAIza[0-9A-Za-z_-]{35}\b", "[secret]"),  # Google API key
    (r"\bxox[abprs]-[A-Za-z0-9-]{10,}", "[secret]"),  # Slack tokens
    (r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}", "Bearer [secret]"),
    (r"(?<![\w.])\+?\d[\d ().-]{7,}\d(?![\w.])", "[phone]"),
)


def redactor(extra: Iterable[str]) -> Callable[[str], str]:
    """A function that masks the default patterns and the plan's own (regexes)."""
    rules = [(re.compile(p), r) for p, r in DEFAULT_REDACTIONS]
    rules += [(re.compile(p), "[redacted]") for p in extra]

    def redact(value: str) -> str:
        for pattern, replacement in rules:
            value = pattern.sub(replacement, value)
        return value

    return redact


def validate_redaction_patterns(patterns: Any) -> list[str]:
    """The plan setting's problems, for the admin and the API (empty when it is valid)."""
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return ["A list of regular expressions (strings)."]
    problems = []
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            problems.append(f"{p!r}: {exc}")
    return problems


# --- ingest --------------------------------------------------------------------------------


def _messages(request: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("request.messages", "invalid", "request.messages must be a non-empty list.")
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or m.get("role") not in ROLES:
            raise Invalid(
                "request.messages", "invalid", f"Each message needs a role in {sorted(ROLES)}."
            )
        content = m.get("content")
        if not isinstance(content, str) or len(content) > MAX_CONTENT_CHARS:
            raise Invalid(
                "request.messages",
                "invalid",
                f"Message content must be a string of at most {MAX_CONTENT_CHARS} characters.",
            )
        out.append({"role": m["role"], "content": content})
    return out


def _parse(event: Any, infos: Mapping[str, Any], identity: Any, now: datetime) -> dict[str, Any]:
    if not isinstance(event, Mapping):
        raise Invalid("sample", "invalid", "Each sample must be an object.")
    sample_id = text(event, "id", MAX_ID_LENGTH)
    decision_id = text(event, "decision_id", MAX_ID_LENGTH)
    key = text(event, "plan", 63)
    info = infos.get(key)
    if info is None or not identity.may_see(info.plan.pk):
        raise Invalid("plan", "plan_not_found", f"No plan with key {key!r}.")
    version = integer(event, "plan_version", required=True, minimum=1)
    assert version is not None
    if version > info.plan.version:
        raise Invalid("plan_version", "unknown_version", f"Plan {key!r} has no version {version}.")
    run_id, run_number, stage_id = info.at(version)
    if (run_number or 0) != integer(event, "run", required=True):
        raise Invalid("run", "run_mismatch", f"Plan {key!r} was at run {run_number or 0}.")
    unit = text(event, "unit", MAX_UNIT_LENGTH)
    ts = timestamp(event, now)
    request = event.get("request")
    if not isinstance(request, Mapping):
        raise Invalid("request", "required", "request is required (messages, params).")
    params = request.get("params", {})
    if not isinstance(params, Mapping):
        raise Invalid("request.params", "invalid", "request.params must be an object.")
    schema = request.get("json_schema")
    if schema is not None and not isinstance(schema, Mapping):
        raise Invalid("request.json_schema", "invalid", "request.json_schema must be an object.")
    control = event.get("control")
    if not isinstance(control, Mapping):
        raise Invalid("control", "required", "control is required (the production answer).")
    answer = control.get("text", "")
    if not isinstance(answer, str) or len(answer) > MAX_CONTENT_CHARS:
        raise Invalid("control.text", "invalid", "control.text must be a string.")
    error = control.get("error")
    if error is not None and error not in ERROR_KINDS:
        raise Invalid(
            "control.error",
            "invalid",
            f"control.error must be null or one of {sorted(ERROR_KINDS)}.",
        )
    redact = redactor(info.plan.redaction_patterns or [])
    return {
        "sample_id": sample_id,
        "plan_id": info.plan.pk,
        "run_id": run_id,
        "stage_id": stage_id,
        "decision_id": decision_id,
        "unit": unit,
        "created_at": ts,
        "request": {
            "messages": [
                {"role": m["role"], "content": redact(m["content"])} for m in _messages(request)
            ],
            "params": dict(params),
            "json_schema": dict(schema) if schema is not None else None,
        },
        "control": {
            "text": redact(answer),
            "latency_ms": number(control, "latency_ms", required=True, maximum=MAX_MS),
            "ttft_ms": number(control, "ttft_ms", required=False, maximum=MAX_MS),
            "error": error,
            "input_tokens": integer(control, "input_tokens", required=False),
            "output_tokens": integer(control, "output_tokens", required=False),
        },
    }


def shadow_samples_ingest(*, identity: Any, payload: Any) -> IngestResult:
    """Validate, redact and store a batch of shadow samples once each; enqueue the new ones.
    Samples of a plan that is not in a stage at their version are stored as skipped."""
    samples = events_of(payload, "samples")
    check_batch_size(samples)
    now = timezone.now()
    infos = plan_infos(
        e["plan"] for e in samples if isinstance(e, Mapping) and isinstance(e.get("plan"), str)
    )
    result = IngestResult()
    parsed: dict[str, dict[str, Any]] = {}
    for index, event in enumerate(samples):
        try:
            row = _parse(event, infos, identity, now)
        except Invalid as bad:
            result.rejected.append(Rejection(index, bad.field, bad.code, bad.message))
            continue
        if row["sample_id"] in parsed:
            result.duplicates += 1
        else:
            parsed[row["sample_id"]] = row
    if parsed:
        with transaction.atomic():
            existing = set(
                ShadowSample.objects.filter(pk__in=list(parsed)).values_list("pk", flat=True)
            )
            new = [r for sid, r in parsed.items() if sid not in existing]
            ShadowSample.objects.bulk_create(
                [
                    ShadowSample(
                        **r,
                        status=ShadowStatus.PENDING if r["stage_id"] else ShadowStatus.SKIPPED,
                        skip_reason="" if r["stage_id"] else "the plan was not running",
                    )
                    for r in new
                ],
                ignore_conflicts=True,  # a concurrent retry of this batch: claims decide
            )
            ids = [r["sample_id"] for r in new if r["stage_id"]]
            if ids:
                from migrations_app.tasks import enqueue_shadow_samples

                transaction.on_commit(lambda: enqueue_shadow_samples(ids))
        result.stored = len(new)
        result.duplicates += len(existing)
    metrics.count_ingest(
        "shadow",
        stored=result.stored,
        duplicates=result.duplicates,
        rejected=[r.code for r in result.rejected],
        dropped=0,
    )
    return result


# --- processing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """What the candidate's call gave (a provider adapter's result, normalised)."""

    text: str
    latency_ms: float
    ttft_ms: float | None = None
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "error": self.error,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


Caller = Callable[[ShadowSample], CandidateResult]
Comparer = Callable[[ShadowSample, CandidateResult], dict[str, Any]]


def _price(model: Any, input_tokens: int | None, output_tokens: int | None) -> float | None:
    if input_tokens is None or output_tokens is None:
        return None
    return (
        input_tokens * float(model.input_price_per_mtok)
        + output_tokens * float(model.output_price_per_mtok)
    ) / 1e6


def _estimate(model: Any, sample: ShadowSample) -> float:
    """The candidate call's cost before it is made, for the budget's reservation: control's
    token counts, or a characters / 4 estimate of the prompt and control's answer when the
    application did not report them (no reservation would let every sample through)."""
    control = sample.control
    prompt_chars = sum(len(m.get("content", "")) for m in sample.request.get("messages", []))
    input_tokens = control.get("input_tokens") or -(-prompt_chars // 4)
    output_tokens = control.get("output_tokens") or max(1, -(-len(control.get("text", "")) // 4))
    return _price(model, input_tokens, output_tokens) or 0.0


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def shadow_claim(sample_ids: Sequence[str], *, now: datetime | None = None) -> list[ShadowSample]:
    """Claim what can be processed now: pending samples, and running ones whose lease has
    expired. Within a plan's daily budget; samples beyond it are skipped and the plan's
    audit trail says so (once a day)."""
    now = now or timezone.now()
    claimable = Q(status=ShadowStatus.PENDING) | Q(status=ShadowStatus.RUNNING, lease_until__lt=now)
    claimed: list[ShadowSample] = []
    by_plan: dict[int, list[str]] = {}
    for pk, plan_id in ShadowSample.objects.filter(claimable, pk__in=sample_ids).values_list(
        "pk", "plan_id"
    ):
        by_plan.setdefault(plan_id, []).append(pk)
    for plan_id, ids in sorted(by_plan.items()):
        with transaction.atomic():
            # Serialises claims of one plan: the budget check and reservation below see
            # every other worker's reservations.
            plan = (
                MigrationPlan.objects.select_for_update(of=("self",))
                .select_related("candidate_model__provider", "judge_model__provider")
                .filter(pk=plan_id)
                .first()
            )
            if plan is None:  # deleted since the samples were listed (they went with it)
                continue
            spent = _spent_today(plan, now)
            budget = plan.shadow_budget_usd_per_day
            for sample in ShadowSample.objects.filter(claimable, pk__in=ids).order_by("pk"):
                estimate = _estimate(plan.candidate_model, sample)
                if budget is not None and spent + (estimate or 0.0) > float(budget):
                    ShadowSample.objects.filter(pk=sample.pk).update(
                        status=ShadowStatus.SKIPPED,
                        skip_reason=f"daily shadow budget of ${budget} reached",
                        lease_until=None,
                    )
                    _note_budget(plan, float(budget), spent, now)
                    continue
                spent += estimate or 0.0
                attempts = sample.attempts + 1
                lease = now + timedelta(seconds=settings.TURNOUT_SHADOW_LEASE_SECONDS)
                won = ShadowSample.objects.filter(
                    claimable, pk=sample.pk, attempts=sample.attempts
                ).update(
                    status=ShadowStatus.RUNNING,
                    attempts=attempts,
                    lease_until=lease,
                    candidate_cost_usd=estimate,  # the reservation, until the real cost
                )
                if won:
                    sample.status, sample.attempts, sample.lease_until = (
                        ShadowStatus.RUNNING,
                        attempts,
                        lease,
                    )
                    sample.plan = plan
                    claimed.append(sample)
    return claimed


def _spent_today(plan: MigrationPlan, now: datetime) -> float:
    """The plan's shadow cost since UTC midnight: done calls at their real cost, running ones
    at their reservation."""
    total = ShadowSample.objects.filter(
        Q(status=ShadowStatus.DONE, completed_at__gte=_day_start(now))
        | Q(status=ShadowStatus.RUNNING),
        plan=plan,
    ).aggregate(s=Sum("candidate_cost_usd"))["s"]
    return float(total or 0.0)


def _note_budget(plan: MigrationPlan, budget: float, spent: float, now: datetime) -> None:
    if not AuditEvent.objects.filter(
        plan=plan, action="shadow_budget_reached", created_at__gte=_day_start(now)
    ).exists():
        plans.record_edit(
            plan,
            actor=plans.ENGINE,
            action="shadow_budget_reached",
            reason=f"Shadowing stopped until 00:00 UTC: ${spent:.2f} of the ${budget:.2f} "
            "daily shadow budget is spent.",
            evidence={"budget_usd": budget, "spent_usd": round(spent, 6)},
            publish=False,
        )


def shadow_complete_many(
    completed: Sequence[tuple[ShadowSample, CandidateResult, Mapping[str, Any]]],
    *,
    now: datetime | None = None,
) -> int:
    """Store the candidates' answers and comparisons of a task's batch in one transaction:
    each sample is stored if its claim is still current, and only those are aggregated (one pass over the
    windows and one pair-aggregate update per stage). Returns how many were stored."""
    now = now or timezone.now()
    window = aggregation.window_start(now)
    facts: list[tuple[int, OutcomeFacts]] = []
    pairs: dict[int, list[tuple[bool, bool, Mapping[str, Any]]]] = {}
    with transaction.atomic():
        for sample, result, comparison in completed:
            plan = sample.plan
            cost = _price(plan.candidate_model, result.input_tokens, result.output_tokens)
            redact = redactor(plan.redaction_patterns or [])
            done = ShadowSample.objects.filter(
                pk=sample.pk, status=ShadowStatus.RUNNING, attempts=sample.attempts
            ).update(
                status=ShadowStatus.DONE,
                candidate={**result.to_dict(), "text": redact(result.text)},
                comparison=dict(comparison),
                candidate_cost_usd=cost,
                completed_at=now,
                lease_until=None,
            )
            if not done:
                continue
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
        ingest.aggregate(facts, [])
        for stage_id in sorted(pairs):  # one lock order for every worker
            _add_pairs(stage_id, pairs[stage_id])
    return len(facts)


SCORE_KEYS = (
    "exact_match",
    "normalized_match",
    "json_valid",
    "similarity",
    "length_ratio",
    "refusal",
    "judge_score",  # +1 the judge preferred the candidate, 0 a tie, -1 control
)


def _add_pairs(stage_id: int, pairs: Sequence[tuple[bool, bool, Mapping[str, Any]]]) -> None:
    """Fold (control failed, candidate failed, comparison) pairs into the stage's paired
    aggregate: the failure table and each score's count and sum."""
    ShadowAggregate.objects.get_or_create(stage_id=stage_id)
    row = ShadowAggregate.objects.select_for_update().get(stage_id=stage_id)
    data = dict(row.data)
    for control_failed, candidate_failed, comparison in pairs:
        data["n"] = data.get("n", 0) + 1
        key = {
            (False, False): "neither",
            (True, False): "control_only",
            (False, True): "candidate_only",
            (True, True): "both",
        }[(control_failed, candidate_failed)]
        data[key] = data.get(key, 0) + 1
        for name in SCORE_KEYS:
            value = comparison.get(name)
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, int | float):
                data[f"{name}_n"] = data.get(f"{name}_n", 0) + 1
                data[f"{name}_sum"] = data.get(f"{name}_sum", 0.0) + float(value)
    row.data = data
    row.save(update_fields=["data", "updated_at"])


def _end_claim(sample: ShadowSample, **fields: Any) -> bool:
    """Move a claimed sample on from running, its reservation dropped, if this claim is still
    the current one (compare-and-set on the attempt)."""
    return bool(
        ShadowSample.objects.filter(
            pk=sample.pk, status=ShadowStatus.RUNNING, attempts=sample.attempts
        ).update(lease_until=None, candidate_cost_usd=None, **fields)
    )


def shadow_release(sample: ShadowSample) -> bool:
    """Give a claimed sample back (pending) when its call was never made: it is processed
    again later, by this worker or another."""
    return _end_claim(sample, status=ShadowStatus.PENDING)


def shadow_skip(sample: ShadowSample, reason: str) -> bool:
    """A claimed sample that cannot be shadowed at all (the workers cannot call the
    candidate): stored as skipped with the reason, counted nowhere."""
    return _end_claim(sample, status=ShadowStatus.SKIPPED, skip_reason=reason[:200])


class NotCalled(Exception):
    """The candidate was not called: ``retry`` says whether a later attempt may be
    (no free call slot) or not (the workers cannot reach the candidate at all)."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def shadow_run(
    sample_ids: Sequence[str], *, call: Caller, compare: Comparer, concurrency: int | None = None
) -> dict[str, int]:
    """Claim, call the candidate and compare for each sample (many at once, in a thread pool:
    the calls wait on the network), complete each in this thread's transaction."""
    claimed = shadow_claim(sample_ids)
    counts = {"claimed": len(claimed), "done": 0, "lost": 0, "released": 0, "skipped": 0}
    if not claimed:
        return counts
    workers = min(concurrency or settings.TURNOUT_SHADOW_CONCURRENCY, len(claimed))

    # No ORM in the pool's threads: each would open a database connection of its own. The
    # call and the comparison read only what the claim loaded.
    def one(
        sample: ShadowSample,
    ) -> tuple[ShadowSample, CandidateResult | NotCalled, dict[str, Any]]:
        try:
            result = call(sample)
        except NotCalled as exc:
            return sample, exc, {}
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

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        # Stored as they come back, a few at a time: one transaction per few answers, and
        # one slow call holds back only the answers that arrive after it.
        for future in as_completed([pool.submit(one, sample) for sample in claimed]):
            sample, result, comparison = future.result()
            if isinstance(result, NotCalled):
                if result.retry:
                    counts["released"] += shadow_release(sample)
                else:
                    counts["skipped"] += shadow_skip(sample, result.reason)
                continue
            completed.append((sample, result, comparison))
            if len(completed) >= COMPLETE_BATCH:
                flush()
    finally:
        # On the task's soft time limit: keep what came back, start no queued call (their
        # samples' leases expire and the sweeper hands them on), do not wait for the rest.
        pool.shutdown(wait=False, cancel_futures=True)
        flush()
    return counts


def shadow_sweep(*, now: datetime | None = None, limit: int = 1000) -> list[str]:
    """Samples whose task was lost (pending for longer than a lease: a worker killed with
    tasks it had fetched but not started) or whose worker died mid-call (lease expired):
    their ids, to process again. Enqueuing a sample twice is harmless (claims decide)."""
    now = now or timezone.now()
    lease = timedelta(seconds=settings.TURNOUT_SHADOW_LEASE_SECONDS)
    return list(
        ShadowSample.objects.filter(
            Q(status=ShadowStatus.PENDING, created_at__lt=now - lease)
            | Q(status=ShadowStatus.RUNNING, lease_until__lt=now)
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


def shadow_purge(*, now: datetime | None = None) -> int:
    """Delete samples past their plan's retention (prompts and answers are sensitive)."""
    now = now or timezone.now()
    deleted = 0
    for plan_id, days in MigrationPlan.objects.values_list("pk", "shadow_retention_days"):
        deleted += ShadowSample.objects.filter(
            plan_id=plan_id, created_at__lt=now - timedelta(days=days)
        ).delete()[0]
    return deleted


# --- production call and comparison (the SDK's provider adapters and compare module) -------

# One adapter per arm per worker process, shared by a task's threads (and kept with its
# connection pool). Arms are few and change only with a plan's routing, so nothing is evicted:
# an evicted adapter would be closed under a call still using it.
_adapters = providers.Adapters()


def candidate_spec(plan: MigrationPlan) -> ArmSpec:
    """The plan's candidate arm exactly as its snapshot gives it to the SDKs (the same model,
    base URL, key variable, params and prompt adjustment)."""
    return arm_spec(
        plan.candidate_model,
        plan.candidate_params,
        plan.candidate_prompt_mode,
        plan.candidate_prompt_text,
    )


def _limit(model: ModelSpec) -> limits.Limit:
    connection = model.provider
    return limits.Limit(
        connection.name, connection.max_concurrent_calls, connection.max_calls_per_second
    )


def with_provider(model: ModelSpec, spec: ArmSpec, use: Callable[[Provider], T]) -> T:
    """``use(adapter)`` inside the provider's shared call limits. Raises :class:`NotCalled`
    when no slot came free in time or the adapter cannot be built (no key in this process)."""
    try:
        provider, _ = _adapters.get(spec)  # the cache is never closed: it keeps the adapter
    except providers.ProviderError as exc:
        raise NotCalled(f"cannot call {spec.model}: {exc.message}", retry=False) from exc
    lease = settings.TURNOUT_SHADOW_LEASE_SECONDS
    try:
        with limits.provider_slot(_limit(model), lease=lease, wait=lease / 4):
            return use(provider)
    except limits.SlotTimeout as exc:
        raise NotCalled(str(exc), retry=True) from exc


def provider_call(sample: ShadowSample) -> CandidateResult:
    """Call the plan's candidate arm through the provider adapters, as ``client.complete``
    would (the arm's params and prompt adjustment applied by the adapter)."""
    plan = sample.plan
    request = providers.Request(
        messages=sample.request["messages"],
        params=sample.request.get("params") or {},
        json_schema=sample.request.get("json_schema"),
        timeout=settings.TURNOUT_SHADOW_CALL_TIMEOUT,
    )
    result = with_provider(
        plan.candidate_model, candidate_spec(plan), lambda provider: provider.complete(request)
    )
    return CandidateResult(
        text=result.text,
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        error=result.error,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
    )


def judge_pair(sample: ShadowSample, result: CandidateResult) -> dict[str, Any] | None:
    """The plan's judge model's verdict on the pair, when the plan has one and both answered.
    The answers' order is drawn from the sample id: a retried sample shows the same order."""
    model = sample.plan.judge_model
    if model is None or sample.control.get("error") or result.error:
        return None
    control_text = sample.control.get("text", "")
    try:
        verdict = with_provider(
            model,
            arm_spec(model, {}, "none", ""),
            lambda provider: compare.judge(
                provider,
                sample.request["messages"],
                control_text,
                result.text,
                sample.pk,
                timeout=settings.TURNOUT_SHADOW_CALL_TIMEOUT,
            ),
        )
    except NotCalled as exc:  # the pair still counts; only the judge's opinion is missing
        return {"winner": "invalid", "score": None, "error": "not_called", "reason": exc.reason}
    return verdict.to_dict()


def compare_answers(sample: ShadowSample, result: CandidateResult) -> dict[str, Any]:
    """The comparison scores of control's and the candidate's answers, and the judge's
    verdict (``judge``, its score as ``judge_score``) when the plan has a judge."""
    scores = compare.compare(
        sample.control.get("text", ""),
        result.text,
        json_expected=sample.request.get("json_schema") is not None,
    ).to_dict()
    verdict = judge_pair(sample, result)
    if verdict is not None:
        scores["judge"] = verdict
        scores["judge_score"] = verdict["score"]
    return scores
