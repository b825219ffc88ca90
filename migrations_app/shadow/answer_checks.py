"""The answer checks of a shadow pair (``turnout.checks``, the same function ``complete()`` runs on
the answers it serves): both answers checked, and each check both have as a paired metric value
(control's, candidate's) for the shadow stage's paired guardrails."""

from __future__ import annotations

from typing import Any

from turnout.checks import answer_checks, schema_validator

from migrations_app.models import ShadowSample
from migrations_app.shadow.pipeline import CandidateResult


def pair_checks(sample: ShadowSample, result: CandidateResult) -> dict[str, Any]:
    """``{"control": {...}, "candidate": {...}, "paired": {name: [control, candidate]}}``;
    ``{}`` when either call gave no answer (each side's failure is the error test's)."""
    schema = schema_validator(sample.plan.answer_schema)
    json_expected = sample.request.get("json_schema") is not None
    control = answer_checks(
        sample.control.get("text") or "",
        error=sample.control.get("error"),
        # Applications rarely say why control stopped: truncated is then paired only when
        # they do (it stays a per-arm check in a split).
        finish_reason=sample.control.get("finish_reason"),
        json_expected=json_expected,
        schema=schema,
    )
    candidate = answer_checks(
        result.text,
        error=result.error,
        finish_reason=result.finish_reason,
        json_expected=json_expected,
        schema=schema,
    )
    if not control or not candidate:
        return {}
    paired = {name: [float(control[name]), float(candidate[name])] for name in control
              if name in candidate}  # fmt: skip
    return {"control": control, "candidate": candidate, "paired": paired}
