"""Plain-text rendering shared by every channel: one wording of the evidence, everywhere.

Email sends ``render_text`` as its text part and Slack as its notification fallback;
the formatting helpers here are what the Slack blocks and the email HTML use for the
same numbers, so a page reads the same whichever channel carried it.
"""

from __future__ import annotations

from collections.abc import Mapping

from .message import AlertMessage, GuardrailVerdict


def fmt_number(value: float | None) -> str:
    """A metric value for humans: four significant digits, ``n/a`` when unknown."""
    if value is None:
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def fmt_counts(counts: Mapping[str, int]) -> str:
    """``rate_limit 41, server_error 7``, or ``none``."""
    return ", ".join(f"{kind} {n:,}" for kind, n in counts.items()) or "none"


def error_kinds_line(message: AlertMessage) -> str:
    """Errors per arm on one line; empty when neither arm saw any."""
    if not message.error_kinds_control and not message.error_kinds_candidate:
        return ""
    return (
        f"control: {fmt_counts(message.error_kinds_control)}; "
        f"candidate: {fmt_counts(message.error_kinds_candidate)}"
    )


def bounds_line(verdict: GuardrailVerdict) -> str:
    """``estimate 3.1, at least 2.2, tolerance 1.5 relative, alpha 0.05``.

    The tests are one-sided toward harm, so usually one bound exists; name it in words
    rather than print an interval with a hole in it.
    """
    parts = [f"estimate {fmt_number(verdict.estimate)}"]
    if verdict.lower is not None and verdict.upper is not None:
        parts.append(f"between {fmt_number(verdict.lower)} and {fmt_number(verdict.upper)}")
    elif verdict.lower is not None:
        parts.append(f"at least {fmt_number(verdict.lower)}")
    elif verdict.upper is not None:
        parts.append(f"at most {fmt_number(verdict.upper)}")
    parts.append(f"tolerance {fmt_number(verdict.tolerance)} {verdict.tolerance_kind}")
    parts.append(f"alpha {fmt_number(verdict.alpha)}")
    return ", ".join(parts)


def arm_line(model: str, value: float | None, n: int) -> str:
    """``openai:gpt-4o: 0.012 over 4,812 requests``."""
    return f"{model or 'unknown model'}: {fmt_number(value)} over {n:,} requests"


def render_text(message: AlertMessage) -> str:
    """The whole page as plain text, most important first (for email and Slack's fallback)."""
    lines = [
        message.headline,
        "",
        f"Plan: {message.plan_name} ({message.plan_key}), run {message.run}",
        f"What Turnout did at {message.acted_at}: {message.action_taken}",
        f"Severity: {message.severity}",
    ]
    verdict = message.guardrail
    if verdict is not None:
        lines += [
            "",
            f"Guardrail {verdict.metric}: {verdict.summary}",
            f"  {bounds_line(verdict)}",
            *([f"  changed since {verdict.changed_since}"] if verdict.changed_since else []),
            f"  control   {arm_line(message.control_model, verdict.control_value, verdict.n_control)}",
            f"  candidate {arm_line(message.candidate_model, verdict.candidate_value, verdict.n_candidate)}",
        ]
    elif message.control_model or message.candidate_model:
        lines.append(f"Control: {message.control_model}; candidate: {message.candidate_model}")
    if errors := error_kinds_line(message):
        lines += ["", f"Errors seen: {errors}"]
    for number, pair in enumerate(message.examples, start=1):
        lines += [
            "",
            f"Example {number}",
            f"  prompt:    {_indent(pair.prompt)}",
            f"  control:   {_indent(pair.control)}",
            f"  candidate: {_indent(pair.candidate)}",
        ]
    lines += ["", f"Dashboard: {message.dashboard_url}"]
    return "\n".join(lines) + "\n"


def _indent(text: str) -> str:
    # Multi-line excerpts stay under their label instead of breaking the layout.
    return text.replace("\n", "\n             ")
