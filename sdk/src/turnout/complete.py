"""The provider call path of ``Client.complete()``: call the decided arm through its adapter,
fall back to control when the candidate cannot serve, and say what to report and shadow.

Pure of the client: it is handed the decision, the request, the adapters and what to call to
read a plan, report a result and shadow a request, so that it can be read (and tested) on its
own. A vendor failure is a value in the result, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout import routing
from turnout._log import LogOnce
from turnout.checks import answer_checks, schema_validator
from turnout.contract import (
    FALLBACK_CANDIDATE_ERROR,
    FALLBACK_CONTEXT_WINDOW,
    MAX_CONTENT_CHARS,
    ROLES,
)
from turnout.events import finite_number
from turnout.providers.base import Adapters, Provider, ProviderError, Request, Result, with_prompt
from turnout.routing import ArmSpec, Decision, PlanSnapshot

#: The estimate of prompt tokens is characters / 4 (OpenAI's rule of thumb for English text):
#: no tokenizer to download, and a few microseconds. It undercounts code and non-Latin scripts,
#: so a prompt right at a window's edge may still reach the candidate and fail there.
CHARS_PER_TOKEN = 4

#: Reports one call's result: the decision, the result, the fallback reason (``None`` when the
#: result counts for the decided arm), and the answer checks (``turnout.checks``) as metrics.
ReportResult = Callable[[Decision, Result, str | None, Mapping[str, int]], None]
#: Queues one served answer for the pointwise judge: the decision, the arm that answered, the
#: application's messages and the answer (``Reporter.judge``).
JudgeSample = Callable[[Decision, str, list[dict[str, str]], str], None]


@dataclass(frozen=True, slots=True)
class Completion:
    """What :meth:`Client.complete` served.

    ``text`` is the answer the user gets (``""`` when ``error`` is set; the failed call's own
    text, e.g. the unparsable answer of an ``invalid_output``, stays in its :class:`Result`).
    ``arm`` and ``spec`` are the arm actually served, which differs from ``decision.arm``
    when it fell back: ``fallback_reason`` is then :data:`FALLBACK_CANDIDATE_ERROR` or
    :data:`FALLBACK_CONTEXT_WINDOW`. ``results`` holds every model call made, in order (the
    candidate's failure, then control's answer, after a fallback; empty when no arm could be
    chosen). ``error`` is ``None`` or a kind from :data:`ERROR_KINDS`, with words for a
    person in ``error_message``. Give feedback on the answer with ``decision_id``.
    """

    text: str
    decision: Decision
    arm: str
    spec: ArmSpec | None
    fallback_reason: str | None
    results: tuple[Result, ...]
    error: str | None
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def fell_back(self) -> bool:
        return self.fallback_reason is not None

    @property
    def result(self) -> Result | None:
        """The served call's result (the last one made)."""
        return self.results[-1] if self.results else None

    @property
    def decision_id(self) -> str:
        return self.decision.decision_id

    @property
    def model(self) -> str | None:
        return self.spec.model if self.spec is not None else None

    def __str__(self) -> str:
        return self.text


def complete(
    decision: Decision,
    request: Request,
    *,
    providers: Adapters,
    plan_of: Callable[[str], PlanSnapshot | None],
    report: ReportResult,
    shadow_sample: Callable[..., None],
    log_once: LogOnce,
    judge_sample: JudgeSample | None = None,
) -> Completion:
    """Serve ``request`` under ``decision`` (the rules are :meth:`Client.complete`'s).

    ``plan_of`` reads a plan from the snapshot the client serves now; ``shadow_sample`` is
    :meth:`Client.shadow_sample`; ``judge_sample`` queues an answer for the pointwise judge
    (:func:`judged`: a share of the answers counted for their arm in a split).
    """
    spec = decision.spec
    if spec is None:
        message = f"plan {decision.plan or '?'} is not in the snapshot and no default was given"
        return Completion("", decision, decision.arm, None, None, (), "bad_request", message)

    def call(arm: ArmSpec) -> Result:
        return call_arm(providers, arm, request, log_once)

    plan = plan_of(decision.plan) if decision.plan else None
    schema = schema_validator(plan.answer_schema) if plan is not None else None

    def checks(result: Result) -> dict[str, int]:
        # Every answer Turnout serves is checked where it is seen (issue 15): the same
        # function the shadow workers run on both answers of a pair.
        return answer_checks(
            result.text,
            error=result.error,
            finish_reason=result.finish_reason,
            json_expected=request.json_schema is not None,
            schema=schema,
        )

    # A decision for no plan (the caller's default) has nothing to report against.
    reporting = bool(decision.plan)
    control = decision.fallback
    if decision.arm == routing.CANDIDATE and control is not None:
        if too_long(request, spec):
            served = call(control)
            if reporting:
                report(decision, served, FALLBACK_CONTEXT_WINDOW, checks(served))
            return _completion(decision, control, FALLBACK_CONTEXT_WINDOW, (served,))
        first = call(spec)
        if first.ok or not first.transient or not _fallback_on(plan_of(decision.plan)):
            if reporting:
                report(decision, first, None, checks(first))
                if judge_sample is not None and judged(decision, plan, first):
                    judge_sample(decision, routing.CANDIDATE, _messages(request), first.text)
            return _completion(decision, spec, None, (first,))
        served = call(control)
        if reporting:
            # Queued together, after both calls: they travel in one batch, so feedback on
            # the answer (given after this returns) finds both outcomes stored.
            report(decision, first, None, checks(first))
            report(decision, served, FALLBACK_CANDIDATE_ERROR, checks(served))
        return _completion(decision, control, FALLBACK_CANDIDATE_ERROR, (first, served))
    result = call(spec)
    too_long_there = _too_long_for_candidate(decision, request, plan_of)
    if reporting:
        if too_long_there:
            # The same prompt routed to the candidate would have gone to control,
            # uncounted: counted here it would put only the long prompts (slower,
            # costlier, likelier to fail) in control's sample and flatter the candidate.
            report(decision, result, FALLBACK_CONTEXT_WINDOW, checks(result))
        else:
            report(decision, result, None, checks(result))
            if judge_sample is not None and judged(decision, plan, result):
                judge_sample(decision, decision.arm, _messages(request), result.text)
    # Nor is such a prompt shadowed: the candidate could not take it.
    if decision.shadow and decision.shadow_spec is not None and not too_long_there:
        shadow_sample(
            decision,
            # The application's own request: the worker applies the candidate's params
            # and prompt adjustment itself, as complete() would have.
            messages=_messages(request),
            control_text=result.text,
            latency_ms=result.latency_ms,
            params=dict(request.params) or None,
            json_schema=None if request.json_schema is None else dict(request.json_schema),
            ttft_ms=result.ttft_ms,
            error=result.error,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
        )
    return _completion(decision, spec, None, (result,))


def judged(decision: Decision, plan: PlanSnapshot | None, result: Result) -> bool:
    """Whether this answer goes to the pointwise judge: a plan whose snapshot asks for a
    sample (``judge_bp``, only in a split or rollout with a judge), a decision counted in its
    arm and not shadowed, an answer the server can store, and the decision's judge bucket in the sample. By
    decision id, so that it is the same whichever process answers and at any load."""
    return (
        plan is not None
        and plan.judge_bp > 0
        and decision.reason == "SPLIT"
        and not decision.shadow  # its pair is judged in shadow, against the candidate's
        and result.ok
        and 0 < len(result.text) <= MAX_CONTENT_CHARS
        and routing.judge_bucket(plan.salt, decision.decision_id) < plan.judge_bp
    )


def _messages(request: Request) -> list[dict[str, str]]:
    """The application's own messages (the judge scores the answer to what the user asked;
    the worker applies no prompt adjustment)."""
    return [dict(m) for m in request.messages]


def _too_long_for_candidate(
    decision: Decision, request: Request, plan_of: Callable[[str], PlanSnapshot | None]
) -> bool:
    """A control unit's prompt that the candidate's context window could not take, while
    the plan splits or shadows traffic (its outcome then counts in neither arm)."""
    if decision.arm != routing.CONTROL or decision.reason != "SPLIT":
        return False
    plan = plan_of(decision.plan)
    return plan is not None and too_long(request, plan.candidate)


def _fallback_on(plan: PlanSnapshot | None) -> bool:
    return True if plan is None else plan.fallback_to_control


def warm_up(providers: Adapters, snapshot: routing.Snapshot) -> int:
    """Make the adapters of every arm that may serve traffic now (control, and the candidate
    of a plan sending it any share), so that an arm's first request is not a cold start: the
    vendor SDK's import and client construction take seconds on a loaded machine, and a step
    that starts a candidate's split would otherwise count them in its first latencies. Run in
    the snapshot's refresh thread (``SnapshotSource.on_install``), once the application uses
    ``complete()``. Arms that cannot be made (no key, no vendor SDK) are left to fail on their
    request, as before. Returns how many adapters were made."""
    made = 0
    for plan in snapshot.plans.values():
        arms = [plan.control]
        if plan.weight_bp > 0 or any(bp > 0 for bp in plan.cohorts.values()):
            arms.append(plan.candidate)
        for spec in arms:
            try:
                provider, owned = providers.get(spec)
            except Exception:
                continue
            if owned:  # the client is closed: it keeps none
                provider.close()
            else:
                made += 1
    return made


def call_arm(providers: Adapters, spec: ArmSpec, request: Request, log_once: LogOnce) -> Result:
    """One arm's answer as a :class:`Result`, whatever went wrong (a missing key variable,
    a vendor SDK not installed, a bug in an adapter)."""
    provider: Provider
    try:
        # The arm's adapter, kept for the client's life; True with it when the caller must
        # close it (a client already closed keeps none).
        provider, owned = providers.get(spec)
    except ProviderError as exc:
        return Result(
            text="", model=spec.model, error=exc.kind, transient=exc.transient,
            status=exc.status, error_message=exc.message, attempts=0,
        )  # fmt: skip
    except Exception as exc:  # e.g. ImportError: the arm's vendor SDK is not installed
        return Result(
            text="", model=spec.model, error="bad_request",
            error_message=f"no adapter for {spec.kind}: {exc!r}", attempts=0,
        )  # fmt: skip
    try:
        return provider.complete(request)
    except Exception as exc:
        log_once.warning(f"adapter-{spec.kind}", "turnout: %s adapter failed: %r", spec.kind, exc)
        return Result(text="", model=spec.model, error="server_error", error_message=repr(exc))
    finally:
        if owned:
            provider.close()


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """Prompt tokens, estimated as characters / 4 rounded up (see :data:`CHARS_PER_TOKEN`)."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return -(-chars // CHARS_PER_TOKEN)


def too_long(request: Request, spec: ArmSpec) -> bool:
    """Whether the prompt, with the arm's prompt adjustment, exceeds the arm's context window."""
    window = spec.context_window
    if window is None:
        return False
    return estimate_tokens(with_prompt(request, spec.prompt).messages) > window


def request_of(messages: Any, params: Any, json_schema: Any, stream: Any, timeout: Any) -> Request:
    """The normalised request, or TypeError / ValueError for what the caller got wrong."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} objects")
    if not messages:
        raise ValueError("messages must not be empty")
    copied: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{index}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role must be one of {sorted(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise TypeError(f"messages[{index}].content must be a string")
        copied.append({"role": role, "content": content})
    if params is not None and not isinstance(params, Mapping):
        raise TypeError("params must be a mapping or None")
    if json_schema is not None and not isinstance(json_schema, Mapping):
        raise TypeError("json_schema must be a mapping (a JSON schema, or {}) or None")
    if not isinstance(stream, bool):
        raise TypeError("stream must be a bool")
    if not finite_number(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return Request(
        messages=copied,
        params=dict(params or {}),
        json_schema=None if json_schema is None else dict(json_schema),
        stream=stream,
        timeout=float(timeout),
    )


def _completion(
    decision: Decision, spec: ArmSpec, reason: str | None, results: tuple[Result, ...]
) -> Completion:
    served = results[-1]
    arm = routing.CONTROL if reason else decision.arm
    text = served.text if served.ok else ""
    return Completion(
        text, decision, arm, spec, reason, results, served.error, served.error_message
    )
