"""Redaction: what is masked in a shadow sample's prompts and answers before they are stored.

Every pattern runs on RE2 (google-re2): linear in the text whatever the pattern, so neither a
plan editor's pattern (``(a+)+$``) nor a hostile prompt can pin a worker."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

# The setting's check lives with the plan's validation (plans sit below shadow); named here too.
from migrations_app.plans.checks import PatternError, compile_pattern, validate_redaction_patterns

__all__ = ["DEFAULT_REDACTIONS", "PHONE", "redactor", "validate_redaction_patterns"]

# Always masked before a sample is stored: what leaks most often into prompts.
DEFAULT_REDACTIONS: tuple[tuple[str, str], ...] = (
    (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", "[email]"),
    (r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}", "[secret]"),  # OpenAI, Anthropic (sk-ant-…)
    (r"\bAKIA[0-9A-Z]{16}\b", "[secret]"),  # AWS access key id
    (r"\bAIza[0-9A-Za-z_-]{35}\b", "[secret]"),  # Google API key
    (r"\bxox[abprs]-[A-Za-z0-9-]{10,}", "[secret]"),  # Slack tokens
    (r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}", "Bearer [secret]"),
)
# A phone number: a digit, 7 or more digits, spaces, brackets, dots or dashes, and a digit,
# with neither a word character nor a dot on either side. RE2 has no lookarounds: the sides
# are matched (group 1 is the number) and the next search starts at the number's end, so the
# character after one number can stand before the next.
_EDGE = r"[^\pL\pN_.]"
PHONE = rf"(?:^|{_EDGE})(\+?\d[\d ().-]{{7,}}\d)(?:{_EDGE}|$)"
_MASK = "[redacted]"


def _mask_phones(pattern: Any, value: str) -> str:
    out, pos = [], 0
    while (found := pattern.search(value, pos)) is not None:
        start, end = found.span(1)
        out += [value[pos:start], "[phone]"]
        pos = end
    out.append(value[pos:])
    return "".join(out)


def _encodable(value: str) -> str:
    """RE2 reads UTF-8: a lone surrogate (a provider's answer may hold one) becomes U+FFFD."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")  # pragma: no branch
    return value


@functools.lru_cache(maxsize=256)
def _rules(extra: tuple[str, ...]) -> tuple[list[tuple[Any, str]], Any, list[Any], bool]:
    rules = [(compile_pattern(p), r) for p, r in DEFAULT_REDACTIONS]
    own: list[Any] = []
    broken = False
    for p in extra:
        try:
            own.append(compile_pattern(p))
        except PatternError:
            # Saved before patterns were checked with RE2: fail closed, mask the whole text.
            broken = True
    return rules, compile_pattern(PHONE), own, broken


def redactor(extra: Iterable[str]) -> Callable[[str], str]:
    """A function that masks the default patterns and the plan's own (RE2 regexes). A saved
    pattern RE2 cannot compile (the validation refuses those now) masks the whole text."""
    rules, phone, own, broken = _rules(tuple(str(p) for p in extra))

    def redact(value: str) -> str:
        if broken and value:
            return _MASK
        value = _encodable(value)
        for pattern, replacement in rules:
            value = pattern.sub(replacement, value)
        value = _mask_phones(phone, value)
        for pattern in own:
            value = pattern.sub(_MASK, value)
        return value

    return redact
