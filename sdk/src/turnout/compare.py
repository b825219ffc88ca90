"""Comparing a candidate's answer with the control's: pure functions, no network, no model.

:func:`compare` scores one pair of answers (exact and normalised match, JSON validity and a
key-by-key diff, a lexical similarity, the length ratio, refusals). The judges that ask a third
model (pairwise and pointwise) are in :mod:`turnout.judges`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_DIFF_ENTRIES",
    "REFUSAL_PATTERNS",
    "Comparison",
    "compare",
    "is_refusal",
    "json_diff",
    "normalize",
    "parse_json",
    "similarity",
    "tokens",
]

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` is JSON, tolerating one Markdown code fence around it
    (models often wrap JSON in one even when told not to); ``(False, None)`` otherwise."""
    match = _FENCE.match(text)
    body = match.group(1) if match else text
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        # RecursionError: json's decoder recurses per nesting level, so "[[[[...]]]]" from a
        # model gone wrong would otherwise escape as an exception instead of "not JSON".
        return False, None


# --- text normalisation -----------------------------------------------------------------


def _translation(text: str) -> dict[int, str | None]:
    # Built from the text's own distinct characters: one category lookup per distinct character
    # instead of per character, so a megabyte of text costs one str.translate.
    table: dict[int, str | None] = {}
    for char in set(text):
        category = unicodedata.category(char)
        if category[0] == "P" or char == "`":  # the backtick is a "symbol" to Unicode
            # A space, not nothing: "end.Next" must stay two words, and "3.14" must not become
            # "314". The price: "e-mail" and "email" differ (so do they for a reader).
            table[ord(char)] = " "
        elif category == "Cf":
            # Format characters (zero-width space and joiners, BOM, soft hyphen) are invisible.
            table[ord(char)] = None
    return table


def normalize(text: str) -> str:
    """``text`` as compared by ``normalized_match``: NFKC (full-width forms, ligatures and
    composed accents unified), case folded, punctuation (Unicode category P*, and the
    backtick of Markdown code) turned into spaces, invisible format characters dropped,
    whitespace collapsed."""
    # NFKC again after casefold: folding may produce sequences NFKC would have composed.
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.translate(_translation(text)).split())


#: Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, Han): each
#: of their characters is one token, else a whole Chinese sentence would be a single "word".
_UNSPACED = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\U00020000-\U0003134f"
)
_TOKEN = re.compile(f"[{_UNSPACED}]|[^\\s{_UNSPACED}]+")


def tokens(text: str) -> list[str]:
    """The words of :func:`normalize`\\ d ``text`` (characters, in unspaced scripts)."""
    return _TOKEN.findall(normalize(text))


def similarity(control: str, candidate: str) -> float:
    """Token-level F1 of the two texts' normalised words, in [0, 1].

    Why this score: it is the answer-overlap measure of extractive QA evaluation (the SQuAD
    v1.1 script, Rajpurkar et al. 2016), so a reader can interpret it ("the share of words the
    answers have in common", the Dice coefficient of the two word multisets); it is linear in
    time and memory (two Counters), so long answers are scored whole, where difflib's ratio is
    quadratic in the worst case and would have to be capped to a prefix; it ignores word order,
    which suits two valid phrasings of one answer; and it shares :func:`normalize` with
    ``normalized_match``, so a normalised match always scores 1. What it cannot see: meaning
    ("yes" vs "no" in a long sentence costs one word) and order ("dog bites man").
    Two texts without any word (empty, only punctuation) are identical: 1.
    """
    left, right = Counter(tokens(control)), Counter(tokens(candidate))
    total = sum(left.values()) + sum(right.values())
    if total == 0:
        return 1.0
    common = sum((left & right).values())
    return 2.0 * common / total


# --- refusals ---------------------------------------------------------------------------

#: What counts as a refusal, matched in the opening of the answer after :func:`_plain`
#: (NFKC, case folded, curly apostrophes straightened, contractions expanded: "I'm" is
#: "i am", "can't" and "can not" are "cannot", "won't" is "will not"). English only.
#: Deliberately narrow: an apology alone ("I'm sorry for the confusion, here is the fix") or an
#: inability about the world ("I cannot reproduce the bug, but...") is not a refusal; the phrases
#: need a first-person refusal aimed at the request.
REFUSAL_PATTERNS: tuple[str, ...] = (
    # "I can't help with that", "I'm unable to assist", "I won't be able to provide",
    # "I must decline to answer"; "I can't help but notice" is not one.
    r"\bi (?:really |simply |just )?(?:cannot|will not|am unable to|am not able to|"
    r"am not going to|must decline to|have to decline to|do not feel comfortable)"
    r"(?: be able to)? (?:help(?! but)|assist|provide|comply|fulfil|fulfill|do that|do this|"
    r"answer|engage|participate|support|create|generate|write|share|give|discuss|offer|"
    r"produce|continue)\b",
    # "I'm sorry, but I can't." / "I apologize, but I cannot" with no verb after it.
    r"\b(?:i am sorry|sorry|i apologi[sz]e),? (?:but )?i (?:cannot|will not|am unable|"
    r"am not able)\b",
    r"\bi (?:must|have to|need to) (?:respectfully |politely )?decline\b",
    r"\bi am not (?:comfortable|permitted|allowed) (?:to )?(?:help|assist|provid|writ|shar|"
    r"discuss|creat|generat|do that|do this)",
    # Not "as an AI, I do not have opinions, but...": that one usually goes on to answer.
    r"\bas an ai(?: language model| assistant| model)?,? i (?:cannot|will not|am unable|"
    r"am not able)\b",
    r"\b(?:this|that|it) is not something i (?:can|am able to|will) (?:help|assist|do|provide)",
    r"\b(?:against|violates?) my (?:guidelines|policies|policy|programming|principles)\b",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS))
#: Refusals open the answer; looking further would flag long helpful answers that quote or
#: discuss one. In characters of the plain text.
_REFUSAL_WINDOW = 400
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_CONTRACTIONS = (
    (re.compile(r"\bcan'?t\b|\bcan not\b"), "cannot"),
    (re.compile(r"\bwon'?t\b"), "will not"),
    (re.compile(r"\bdon'?t\b"), "do not"),
    (re.compile(r"\bi'?m\b"), "i am"),
    (re.compile(r"\b(this|that|it)'s\b"), r"\1 is"),
)


def _plain(text: str) -> str:
    # Only the window plus some slack is normalised: the tail of a long answer is never read.
    head = unicodedata.normalize("NFKC", text[: _REFUSAL_WINDOW * 2]).casefold()
    head = " ".join(head.translate(_APOSTROPHES).split())
    for pattern, replacement in _CONTRACTIONS:
        head = pattern.sub(replacement, head)
    return head[:_REFUSAL_WINDOW]


def is_refusal(text: str) -> bool:
    """Whether ``text`` opens with a refusal (:data:`REFUSAL_PATTERNS`)."""
    return _REFUSAL.search(_plain(text)) is not None


# --- JSON diff --------------------------------------------------------------------------

#: At most this many added + removed + changed entries are listed (the counts stay exact):
#: a diff is stored per sample, and two unrelated 10 MB answers must not store a third.
MAX_DIFF_ENTRIES = 50
#: A value in the diff whose JSON is longer than this is kept as the start of its JSON.
MAX_VALUE_CHARS = 200
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _key_path(parent: str, key: str) -> str:
    if _IDENTIFIER.match(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


def _preview(value: Any) -> Any:
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= MAX_VALUE_CHARS:
        return value
    return f"{text[:MAX_VALUE_CHARS]}… ({len(text)} chars)"


def _kind(value: Any) -> str:
    # JSON's types, not Python's: true is not 1, and 1 is 1.0 (JSON has one number type).
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null"


def _equal_scalars(left: Any, right: Any) -> bool:
    if _kind(left) != _kind(right):
        return False
    # NaN (json.loads accepts the literal) is its own value here, not unequal to itself.
    return bool(left == right or (left != left and right != right))


def json_diff(control: Any, candidate: Any) -> dict[str, Any]:
    """Key-by-key differences from ``control``'s JSON value to ``candidate``'s.

    Objects are compared key by key and arrays index by index, nested; paths read
    ``a.b[2]`` (keys that are not identifiers are quoted: ``a["x y"]``; ``$`` is the root).
    A key or index only one side has is ``added`` (candidate only) or ``removed`` (control
    only) as a whole; a differing scalar or a change of type is ``changed``. ``counts`` are
    exact; the lists hold the first :data:`MAX_DIFF_ENTRIES` entries in document order
    (``truncated`` says when more exist) with long values shortened (:data:`MAX_VALUE_CHARS`).
    """
    added: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    counts = {"added": 0, "removed": 0, "changed": 0}
    listed = 0

    def record(kind: str, entry: dict[str, Any]) -> None:
        nonlocal listed
        counts[kind] += 1
        if listed < MAX_DIFF_ENTRIES:
            listed += 1
            {"added": added, "removed": removed, "changed": changed}[kind].append(entry)

    # An explicit stack, not recursion: a model's answer may nest deeper than Python recurses.
    # Each task is (what, path, control's value, candidate's value); "added" and "removed"
    # are tasks too, so that entries come out in document order.
    stack: list[tuple[str, str, Any, Any]] = [("compare", "", control, candidate)]
    while stack:
        what, path, left, right = stack.pop()
        if what == "removed":
            record("removed", {"path": path, "value": _preview(left)})
            continue
        if what == "added":
            record("added", {"path": path, "value": _preview(right)})
            continue
        tasks: list[tuple[str, str, Any, Any]] = []
        if isinstance(left, dict) and isinstance(right, dict):
            for key, value in left.items():
                child = _key_path(path, key)
                if key in right:
                    tasks.append(("compare", child, value, right[key]))
                else:
                    tasks.append(("removed", child, value, None))
            for key, value in right.items():
                if key not in left:
                    tasks.append(("added", _key_path(path, key), None, value))
        elif isinstance(left, list) and isinstance(right, list):
            for index in range(max(len(left), len(right))):
                child = f"{path}[{index}]"
                if index >= len(right):
                    tasks.append(("removed", child, left[index], None))
                elif index >= len(left):
                    tasks.append(("added", child, None, right[index]))
                else:
                    tasks.append(("compare", child, left[index], right[index]))
        elif not _equal_scalars(left, right):
            record(
                "changed",
                {"path": path or "$", "control": _preview(left), "candidate": _preview(right)},
            )
        stack.extend(reversed(tasks))
    return {
        "equal": not any(counts.values()),
        "added": added,
        "removed": removed,
        "changed": changed,
        "counts": counts,
        "truncated": sum(counts.values()) > listed,
    }


# --- the comparison ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The scores of one pair of answers (see :func:`compare`)."""

    exact_match: bool
    normalized_match: bool
    json_valid: bool | None
    control_json_valid: bool | None
    json_diff: dict[str, Any] | None
    similarity: float
    length_ratio: float | None
    refusal: bool
    control_refusal: bool
    candidate_refusal: bool
    control_chars: int
    candidate_chars: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "exact_match": self.exact_match,
            "normalized_match": self.normalized_match,
            "json_valid": self.json_valid,
            "control_json_valid": self.control_json_valid,
            "json_diff": self.json_diff,
            "similarity": self.similarity,
            "length_ratio": self.length_ratio,
            "refusal": self.refusal,
            "control_refusal": self.control_refusal,
            "candidate_refusal": self.candidate_refusal,
            "control_chars": self.control_chars,
            "candidate_chars": self.candidate_chars,
        }


def compare(control: str, candidate: str, *, json_expected: bool = False) -> Comparison:
    """Score the candidate's answer against the control's for the same request.

    ``json_valid`` is the candidate's JSON validity (a Markdown fence tolerated), ``None``
    when the request did not ask for JSON; ``json_diff`` (:func:`json_diff`) is set when JSON
    was asked for and both answers parse. ``length_ratio`` is candidate over control in
    characters, ``None`` when control is empty. ``refusal``: the candidate refused
    (:func:`is_refusal`) and control did not, the regression worth counting; both arms'
    flags are reported too.
    """
    json_valid: bool | None = None
    control_json_valid: bool | None = None
    diff: dict[str, Any] | None = None
    if json_expected:
        json_valid, candidate_value = parse_json(candidate)
        control_json_valid, control_value = parse_json(control)
        if json_valid and control_json_valid:
            diff = json_diff(control_value, candidate_value)
    control_refusal = is_refusal(control)
    candidate_refusal = is_refusal(candidate)
    return Comparison(
        exact_match=control == candidate,
        normalized_match=normalize(control) == normalize(candidate),
        json_valid=json_valid,
        control_json_valid=control_json_valid,
        json_diff=diff,
        similarity=similarity(control, candidate),
        length_ratio=len(candidate) / len(control) if control else None,
        refusal=candidate_refusal and not control_refusal,
        control_refusal=control_refusal,
        candidate_refusal=candidate_refusal,
        control_chars=len(control),
        candidate_chars=len(candidate),
    )
