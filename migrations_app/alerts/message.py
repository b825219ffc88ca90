"""The alert message: everything a page needs, independent of the channel that carries it.

The outbox stores ``AlertMessage.to_dict()`` as JSON and the delivery task rebuilds the
message with ``AlertMessage.from_dict()``. The same dict is the ``alert`` object of the
``turnout.alert.v1`` webhook schema, so changing its shape is a breaking change for
webhook receivers: add optional keys only, or publish a ``v2``.

No secret ever belongs in a message: channels add the webhook URL, signing secret or
routing key from the :class:`~migrations_app.alerts.base.Target` at delivery time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

EVENTS = (
    "rolled_back",
    "paused",
    "warning",
    "advanced",
    "completed",
    "cannot_evaluate",
    "recovered",
    "escalated",
    "test",
)
SEVERITIES = ("critical", "error", "warning", "info")
TOLERANCE_KINDS = ("relative", "absolute")
MAX_EXAMPLES = 3
# Slack caps a section at 3,000 characters and an example shows three excerpts; a cap
# here keeps every channel under every vendor limit and shadow prompts out of the page.
MAX_EXCERPT_CHARS = 500

_VERBS = {
    "rolled_back": "rolled back",
    "paused": "paused",
    "warning": "warning",
    "advanced": "advanced",
    "completed": "completed",
    "cannot_evaluate": "cannot evaluate",
    "recovered": "recovered",
    "escalated": "escalated",
    "test": "test alert",
}


def excerpt(text: str, limit: int = MAX_EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when something was cut."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def format_utc(moment: datetime) -> str:
    """An aware datetime as ISO-8601 UTC with a ``Z`` and whole seconds: ``2025-06-03T14:02:07Z``."""
    if moment.tzinfo is None:
        raise ValueError("format_utc needs an aware datetime")
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def dedup_key(plan_key: str, run: int, subject: str) -> str:
    """The stable key of one plan run and guardrail (or reason, when no guardrail applies).

    Every message about the same problem carries the same key, so PagerDuty folds the
    trigger, escalation and resolution into one incident and the outbox can suppress
    duplicates.
    """
    return f"turnout:{plan_key}:{run}:{subject}"


@dataclass(frozen=True)
class GuardrailVerdict:
    """One guardrail's statistical verdict at the moment Turnout acted.

    ``estimate``, ``lower`` and ``upper`` compare candidate with control in the
    guardrail's ``tolerance_kind``: a ratio (candidate / control) when ``relative``, a
    difference (candidate - control) when ``absolute``. ``summary`` says it in plain
    words for on-call, e.g. "candidate error rate is 3.1x control, at least 2.2x with
    95% confidence; tolerance 1.5x: regressed".
    """

    metric: str
    estimate: float | None
    lower: float | None
    upper: float | None
    tolerance: float
    tolerance_kind: str
    n_control: int
    n_candidate: int
    alpha: float
    summary: str
    control_value: float | None = None
    candidate_value: float | None = None
    # When the guardrail's change detector fired: the change point (ISO 8601 UTC), the
    # moment since which the candidate has been worse (issue 20); None for the whole-stage test.
    changed_since: str | None = None

    def __post_init__(self) -> None:
        if self.tolerance_kind not in TOLERANCE_KINDS:
            raise ValueError(f"tolerance_kind must be one of {TOLERANCE_KINDS}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "estimate": self.estimate,
            "lower": self.lower,
            "upper": self.upper,
            "tolerance": self.tolerance,
            "tolerance_kind": self.tolerance_kind,
            "n_control": self.n_control,
            "n_candidate": self.n_candidate,
            "alpha": self.alpha,
            "summary": self.summary,
            "control_value": self.control_value,
            "candidate_value": self.candidate_value,
        }
        if self.changed_since is not None:  # an optional key: absent for whole-stage tests
            out["changed_since"] = self.changed_since
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuardrailVerdict:
        return cls(
            metric=data["metric"],
            estimate=data["estimate"],
            lower=data["lower"],
            upper=data["upper"],
            tolerance=data["tolerance"],
            tolerance_kind=data["tolerance_kind"],
            n_control=data["n_control"],
            n_candidate=data["n_candidate"],
            alpha=data["alpha"],
            summary=data["summary"],
            control_value=data.get("control_value"),
            candidate_value=data.get("candidate_value"),
            changed_since=data.get("changed_since"),
        )


@dataclass(frozen=True)
class ExamplePair:
    """One request answered by both arms (from shadow data), as excerpts."""

    prompt: str
    control: str
    candidate: str

    def __post_init__(self) -> None:
        for name in ("prompt", "control", "candidate"):
            object.__setattr__(self, name, excerpt(getattr(self, name)))

    def to_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "control": self.control, "candidate": self.candidate}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExamplePair:
        return cls(prompt=data["prompt"], control=data["control"], candidate=data["candidate"])


def _frozen_counts(counts: Mapping[str, int]) -> Mapping[str, int]:
    # Most frequent first, so every channel lists the likely cause before the noise
    # and the rendering is deterministic whatever order the caller counted in.
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return MappingProxyType({kind: int(n) for kind, n in ordered})


@dataclass(frozen=True)
class AlertMessage:
    """Everything one page says: which plan, what Turnout did and when, and the evidence.

    ``error_kinds_control`` / ``error_kinds_candidate`` count error kinds per arm
    (``{"rate_limit": 41}``): errors on both arms read as a vendor outage, errors on
    the candidate only as a worse model. ``examples`` keeps at most three pairs and
    every excerpt is capped, so a caller may pass what it has. ``resolve`` marks the
    message that closes the incident opened under the same ``dedup_key``.
    """

    plan_key: str
    plan_name: str
    run: int
    event: str
    severity: str
    action_taken: str
    acted_at: str
    dedup_key: str
    dashboard_url: str
    reason: str = ""
    control_model: str = ""
    candidate_model: str = ""
    guardrail: GuardrailVerdict | None = None
    error_kinds_control: Mapping[str, int] = field(default_factory=dict)
    error_kinds_candidate: Mapping[str, int] = field(default_factory=dict)
    examples: tuple[ExamplePair, ...] = ()
    resolve: bool = False

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, not {self.event!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")
        if not self.dedup_key:
            raise ValueError("dedup_key is required")
        parsed = datetime.fromisoformat(self.acted_at)
        if parsed.tzinfo is None:
            raise ValueError("acted_at must carry its UTC offset")
        object.__setattr__(self, "acted_at", format_utc(parsed))
        object.__setattr__(self, "error_kinds_control", _frozen_counts(self.error_kinds_control))
        object.__setattr__(
            self, "error_kinds_candidate", _frozen_counts(self.error_kinds_candidate)
        )
        object.__setattr__(self, "examples", tuple(self.examples)[:MAX_EXAMPLES])

    @property
    def headline(self) -> str:
        """One line for titles and subjects: ``support-chat rolled back: error_rate regressed``."""
        line = f"{self.plan_key} {_VERBS[self.event]}"
        if self.reason:
            line += f": {self.reason}"
        # Mail headers refuse newlines and Slack headers are one line.
        return " ".join(line.split())

    @property
    def message_id(self) -> str:
        """Stable across retries of this message, distinct between messages of one incident.

        Receivers use it to drop a redelivery after a response Turnout never saw.
        """
        raw = f"{self.dedup_key}|{self.event}|{self.acted_at}|{self.resolve}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict(to_dict())`` gives back an equal message."""
        return {
            "plan_key": self.plan_key,
            "plan_name": self.plan_name,
            "run": self.run,
            "event": self.event,
            "severity": self.severity,
            "resolve": self.resolve,
            "reason": self.reason,
            "action_taken": self.action_taken,
            "acted_at": self.acted_at,
            "dedup_key": self.dedup_key,
            "control_model": self.control_model,
            "candidate_model": self.candidate_model,
            "guardrail": self.guardrail.to_dict() if self.guardrail else None,
            "error_kinds": {
                "control": dict(self.error_kinds_control),
                "candidate": dict(self.error_kinds_candidate),
            },
            "examples": [pair.to_dict() for pair in self.examples],
            "dashboard_url": self.dashboard_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertMessage:
        """The message ``to_dict`` produced; raises ``KeyError``/``ValueError`` on a bad dict."""
        guardrail = data.get("guardrail")
        error_kinds = data.get("error_kinds") or {}
        return cls(
            plan_key=data["plan_key"],
            plan_name=data["plan_name"],
            run=data["run"],
            event=data["event"],
            severity=data["severity"],
            resolve=bool(data.get("resolve", False)),
            reason=data.get("reason", ""),
            action_taken=data["action_taken"],
            acted_at=data["acted_at"],
            dedup_key=data["dedup_key"],
            control_model=data.get("control_model", ""),
            candidate_model=data.get("candidate_model", ""),
            guardrail=GuardrailVerdict.from_dict(guardrail) if guardrail else None,
            error_kinds_control=error_kinds.get("control", {}),
            error_kinds_candidate=error_kinds.get("candidate", {}),
            examples=tuple(ExamplePair.from_dict(pair) for pair in data.get("examples", ())),
            dashboard_url=data["dashboard_url"],
        )


def build_test_message(
    *, plan_key: str, plan_name: str, run: int, dashboard_url: str, now: datetime
) -> AlertMessage:
    """The message behind the admin's "send test alert" action.

    Its dedup key is unique per send (to the microsecond: two clicks within one second are
    two tests), so a test never folds into a real incident or into the previous test.
    """
    acted_at = format_utc(now)
    sent = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return AlertMessage(
        plan_key=plan_key,
        plan_name=plan_name,
        run=run,
        event="test",
        severity="info",
        reason="this channel works",
        action_taken="Nothing: this is a test alert sent from the Turnout admin.",
        acted_at=acted_at,
        dedup_key=dedup_key(plan_key, run, f"test-{sent}"),
        dashboard_url=dashboard_url,
    )
