"""The events as the contract has them (docs/contracts.md): one function per kind (outcome,
metric value, feedback, shadow sample, judge sample) that checks the tuple the reporter queued
for it and shapes the dict that travels, with its id.

They run in the reporter's sender thread, never on the request path: a bad value makes the
function log once (through the reporter's :class:`~turnout._log.LogOnce`) and return ``None``,
and the reporter drops and counts that event (as it does one whose function raised).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

from turnout import routing
from turnout._log import LogOnce
from turnout.contract import (
    ERROR_KINDS,
    FEEDBACK_SCALES,
    MAX_CONTENT_CHARS,
    MAX_METRICS_PER_EVENT,
    METRIC_NAME_PATTERN,
    UNCOUNTED_REASONS,
)
from turnout.providers.params import sample_params
from turnout.routing import Decision

#: One queued event: the tuple a :class:`~turnout.reporter.Reporter` method (or
#: ``Client.report`` / ``Client.metric``, on the request path) appends, unpacked here.
Event = tuple[Any, ...]


def outcome_event(item: Event, log_once: LogOnce) -> dict[str, Any] | None:
    ts, decision, latency_ms, ttft_ms, error, input_tokens, output_tokens, fallback, metrics = item
    problem = _call_problem(latency_ms, ttft_ms, error, input_tokens, output_tokens)
    if not isinstance(decision, Decision):
        problem = f"report() needs the Decision from decide(), got {type(decision).__name__}"
    if problem:
        log_once.warning(
            f"outcome:{problem.split()[0]}", "turnout: dropping an outcome: %s", problem
        )
        return None
    event = {
        "id": _event_id(),
        "decision_id": decision.decision_id,
        "plan": decision.plan,
        "run": decision.run,
        "plan_version": decision.plan_version,
        "arm": routing.CONTROL if fallback else decision.arm,
        "unit": decision.unit,
        "ts": ts,
        "latency_ms": float(latency_ms),
        "ttft_ms": None if ttft_ms is None else float(ttft_ms),
        "error": error,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    if fallback:
        event["fallback"] = fallback
    if metrics:
        checked = _checked_metrics(metrics, log_once)
        if checked:
            event["metrics"] = checked
    # Served, counted in neither arm: the server needs to know which these are.
    if decision.reason in UNCOUNTED_REASONS:
        event["reason"] = decision.reason
    if decision.cohort:
        event["cohort"] = decision.cohort
    if decision.segments:
        event["segments"] = dict(decision.segments)
    return event


def _checked_metrics(metrics: Any, log_once: LogOnce) -> dict[str, int | float]:
    """An outcome's metrics as they travel: the well-formed ones (a bad one is left out
    and logged once, the outcome still goes)."""
    if not isinstance(metrics, Mapping):
        log_once.warning("metrics-type", "turnout: report(metrics=...) needs a mapping")
        return {}
    out: dict[str, int | float] = {}
    for name, value in list(metrics.items())[:MAX_METRICS_PER_EVENT]:
        problem = _metric_problem(name, value)
        if problem:
            log_once.warning(f"metric:{problem.split()[0]}", "turnout: %s", problem)
            continue
        out[name] = int(value) if isinstance(value, bool) else value
    return out


def metric_event(item: Event, log_once: LogOnce) -> dict[str, Any] | None:
    ts, decision, name, value = item
    plan: str | None = None
    if isinstance(decision, Decision):
        decision_id, plan = decision.decision_id, decision.plan or None
    else:
        decision_id = decision
    problem = _metric_problem(name, value)
    if not isinstance(decision_id, str) or not decision_id:
        problem = "metric() needs a Decision or a decision id"
    if problem:
        log_once.warning(f"metric:{problem.split()[0]}", "turnout: dropping a metric: %s",
                          problem)  # fmt: skip
        return None
    event = {
        "id": _event_id(),
        "decision_id": decision_id,
        "name": name,
        "value": int(value) if isinstance(value, bool) else value,
        "ts": ts,
    }
    if plan:
        event["plan"] = plan
    return event


def feedback_event(item: Event, log_once: LogOnce) -> dict[str, Any] | None:
    ts, decision_id, score, scale = item
    if isinstance(decision_id, Decision):
        decision_id = decision_id.decision_id
    problem = None
    if not isinstance(decision_id, str) or not decision_id:
        problem = "decision_id must be a non-empty string"
    elif scale not in FEEDBACK_SCALES:
        problem = f"scale {scale!r} is not one of {sorted(FEEDBACK_SCALES)}"
    elif not finite_number(score) or (
        score not in (-1, 1) if scale == "thumbs" else not 1 <= score <= 5
    ):
        problem = f"score {score!r} is out of range for scale {scale!r}"
    if problem:
        log_once.warning(
            f"feedback:{problem.split()[0]}", "turnout: dropping feedback: %s", problem
        )
        return None
    return {
        "id": _event_id(),
        "decision_id": decision_id,
        "score": score,
        "scale": scale,
        "ts": ts,
    }


def shadow_event(item: Event, log_once: LogOnce) -> dict[str, Any] | None:
    (ts, decision, messages, params, schema, text, latency_ms, ttft_ms, error,
     input_tokens, output_tokens) = item  # fmt: skip
    problem = _call_problem(latency_ms, ttft_ms, error, input_tokens, output_tokens)
    if not isinstance(messages, list) or not isinstance(text, str):
        problem = "messages must be a list and control_text a string"
    elif params is not None and not isinstance(params, Mapping):
        problem = f"params must be a mapping or None, got {type(params).__name__}"
    if problem:
        log_once.warning(
            f"shadow:{problem.split()[0]}", "turnout: dropping a shadow sample: %s", problem
        )
        return None
    candidate = decision.shadow_spec
    # Only what the candidate may be called with travels (the server refuses a sample
    # with anything else): control's own max_tokens or timeout are not the sample's.
    params, left_out = sample_params(
        candidate.kind if candidate else "", candidate.params if candidate else {}, params or {}
    )
    if left_out:
        log_once.warning(
            f"shadow-params:{','.join(left_out)}",
            "turnout: shadow samples leave out params %s (not allowed for the candidate)",
            left_out,
        )
    return {
        **_sample_header(decision, ts),
        "request": {"messages": messages, "params": params, "json_schema": schema},
        "control": {
            "text": text,
            "latency_ms": float(latency_ms),
            "ttft_ms": None if ttft_ms is None else float(ttft_ms),
            "error": error,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        },
    }


def judge_event(item: Event, log_once: LogOnce) -> dict[str, Any] | None:
    ts, decision, arm, messages, answer = item
    if not (isinstance(answer, str) and 0 < len(answer) <= MAX_CONTENT_CHARS):
        # complete() never queues one: the server would refuse it.
        log_once.warning("judge-answer", "turnout: dropping a judge sample: bad answer")
        return None
    return {
        **_sample_header(decision, ts),
        "arm": arm,
        "request": {"messages": messages},
        "answer": answer,
    }


def _sample_header(decision: Decision, ts: float) -> dict[str, Any]:
    """The fields a shadow or judge sample opens with (the server checks them in this order:
    ``outcomes.event_checks.sample_header``)."""
    return {
        "id": _event_id(),
        "decision_id": decision.decision_id,
        "plan": decision.plan,
        "run": decision.run,
        "plan_version": decision.plan_version,
        "unit": decision.unit,
        "ts": ts,
    }


def _event_id() -> str:
    """128 random bits as 32 hex digits, like ``uuid4().hex`` at a quarter of the cost: the
    server is idempotent on it, so it only has to be unique."""
    return os.urandom(16).hex()


def finite_number(value: Any) -> bool:
    """An int or float, not a bool, not NaN or infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)


def _metric_problem(name: Any, value: Any) -> str | None:
    """What is wrong with a metric's name or value, in words (a bool counts as 0 or 1)."""
    if not isinstance(name, str) or not _METRIC_NAME.match(name):
        return f"metric name {name!r} is not lowercase letters, digits and underscores"
    if not (isinstance(value, bool) or finite_number(value)):
        return f"metric {name} value {value!r} is not a finite number"
    return None


def _call_problem(
    latency_ms: Any, ttft_ms: Any, error: Any, input_tokens: Any, output_tokens: Any
) -> str | None:
    """What is wrong with a model call's measurements (an outcome's, a shadow sample's
    control's), in words; ``None`` if nothing. A bad error kind is named before the rest."""
    if error is not None and error not in ERROR_KINDS:
        return f"error {error!r} is not one of {sorted(ERROR_KINDS)}"
    return (
        _check_ms("latency_ms", latency_ms, required=True)
        or _check_ms("ttft_ms", ttft_ms)
        or _check_tokens("input_tokens", input_tokens)
        or _check_tokens("output_tokens", output_tokens)
    )


def _check_ms(name: str, value: Any, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not finite_number(value) or value < 0:
        return f"{name} must be a finite number >= 0, got {value!r}"
    return None


def _check_tokens(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return f"{name} must be an integer >= 0 or None, got {value!r}"
    return None
