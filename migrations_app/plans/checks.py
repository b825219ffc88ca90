"""Pure checks of a plan's settings outside its phases and guardrails (``phases.py`` has those),
shared by the plan validation (``validation.py``) and the capability that uses the setting.
"""

from __future__ import annotations

from typing import Any

import re2  # google-re2: linear time, no backtracking (a dependency of the SDK)
from turnout.contract import MAX_REGEX_LENGTH

# A plan's own redaction patterns: how many, and each one's length in characters.
MAX_REDACTION_PATTERNS = 50
MAX_REDACTION_PATTERN_LENGTH = MAX_REGEX_LENGTH


class PatternError(ValueError):
    """A redaction pattern RE2 refuses (or one too long)."""


def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2, the only engine redaction patterns run on: a plan editor's
    regex meets every stored prompt, and Python's backtracking ``re`` takes exponential time
    on patterns like ``(a+)+$``. Raises :class:`PatternError` with RE2's reason."""
    if len(pattern) > MAX_REDACTION_PATTERN_LENGTH:
        raise PatternError(
            f"{len(pattern)} characters, over the limit of {MAX_REDACTION_PATTERN_LENGTH}."
        )
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise PatternError(
            f"RE2 cannot compile it: {detail} (RE2 syntax: no lookarounds, no backreferences)."
        ) from None
    except (TypeError, UnicodeError) as exc:
        raise PatternError(f"RE2 cannot compile it: {exc}.") from None


def validate_redaction_patterns(patterns: Any) -> dict[str, list[str]]:
    """The ``redaction_patterns`` setting's problems by path (``redaction_patterns`` for the
    list, ``redaction_patterns[0]`` for one pattern; empty when it is valid): a list of at
    most :data:`MAX_REDACTION_PATTERNS` regular expressions in RE2's syntax, as
    ``shadow.redaction.redactor`` compiles them."""
    path = "redaction_patterns"
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        return {path: ["A list of regular expressions (strings)."]}
    if len(patterns) > MAX_REDACTION_PATTERNS:
        return {path: [f"At most {MAX_REDACTION_PATTERNS} patterns ({len(patterns)} given)."]}
    problems: dict[str, list[str]] = {}
    for i, p in enumerate(patterns):
        try:
            compile_pattern(p)
        except PatternError as exc:
            problems[f"{path}[{i}]"] = [f"{p[:80]!r}: {exc}"]
    return problems
