"""The judges that ask a third model about shadow answers: pure request building and
parsing, and one :meth:`Provider.complete` per call that never raises.

The pairwise judge asks which of two answers is better: :func:`judge_request` builds its
request with the two answers in an order drawn from the caller's rng, :func:`parse_verdict`
maps its answer back to control / candidate / tie, and :func:`judge` does both around one
:meth:`Provider.complete`. The pointwise judge scores one answer on a rubric (1-5):
:func:`score_request`, :func:`parse_score` and :func:`score_answer`. The answer comparison
without a model is :mod:`turnout.compare`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from turnout.compare import parse_json
from turnout.providers.base import Provider, Request, Result

__all__ = [
    "JUDGE_SYSTEM_PROMPT",
    "JudgePrompt",
    "JudgeVerdict",
    "DEFAULT_RUBRIC",
    "JudgeScore",
    "parse_score",
    "score_answer",
    "score_request",
    "score_schema",
    "judge",
    "judge_request",
    "judge_schema",
    "parse_verdict",
]

# --- the pairwise judge -----------------------------------------------------------------

Position = Literal["A", "B"]
Winner = Literal["control", "candidate", "tie", "invalid"]

#: Adapted from MT-Bench's pairwise judge prompt (Zheng et al. 2023, "Judging LLM-as-a-Judge
#: with MT-Bench and Chatbot Arena"), which also measured the position bias that the random
#: order of :func:`judge_request` cancels on average.
JUDGE_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the two answers given by two AI assistants "
    "to the conversation below. Decide which answer better follows the instructions and "
    "answers the last user message, considering correctness, helpfulness, relevance, depth "
    "and clarity. Do not let the order in which the answers are shown, their length or their "
    "style influence you. If they are equally good or equally bad, the verdict is a tie. "
    "Reply with a single JSON object and nothing else: "
    '{"winner": "A" | "B" | "tie", "reason": "<one or two sentences>"}'
)
#: Per answer and for the conversation, in characters: the judge's context window is finite
#: and one runaway answer must not crowd the other out.
MAX_JUDGED_CHARS = 24_000
MAX_REASON_CHARS = 2_000
_TAGS = ("conversation", "answer_a", "answer_b")


def judge_schema() -> dict[str, Any]:
    """The verdict's JSON schema, in the form strict structured outputs accept (every
    property required, no others)."""
    return {
        "type": "object",
        "properties": {
            "winner": {"type": "string", "enum": ["A", "B", "tie"]},
            "reason": {"type": "string"},
        },
        "required": ["winner", "reason"],
        "additionalProperties": False,
    }


def _fenced(
    text: str, limit: int, *, keep: Literal["head", "tail"], tags: Sequence[str] = _TAGS
) -> str:
    # An answer that contains our own tags could otherwise close its block early and speak
    # to the judge as if it were the instructions.
    for tag in tags:
        text = text.replace(f"<{tag}>", f"<\\{tag}>").replace(f"</{tag}>", f"<\\/{tag}>")
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep == "head":
        return f"{text[:limit]}\n[... {cut} more characters not shown]"
    return f"[... {cut} earlier characters not shown]\n{text[-limit:]}"


def _draw_position(rng: random.Random | int | str) -> Position:
    unit = rng.random() if isinstance(rng, random.Random) else random.Random(rng).random()
    return "A" if unit < 0.5 else "B"


@dataclass(frozen=True, slots=True)
class JudgePrompt:
    """The judge's request and where the candidate's answer was shown in it."""

    request: Request
    candidate_position: Position


def judge_request(
    messages: Sequence[Mapping[str, str]],
    control: str,
    candidate: str,
    rng: random.Random | int | str,
    *,
    structured: bool = True,
    timeout: float = 60.0,
) -> JudgePrompt:
    """The judge's :class:`Request` for one pair, the order of the answers drawn from ``rng``.

    ``rng`` is a ``random.Random`` (one draw is taken) or a seed: pass a seed derived from the
    sample's id and a re-run of the same sample shows the judge the same order. ``structured``
    asks the vendor for the verdict's JSON schema (:func:`judge_schema`); turn it off for an
    OpenAI-compatible server that rejects ``response_format`` (the prompt still asks for JSON
    and :func:`parse_verdict` reads it out of surrounding prose).
    """
    position = _draw_position(rng)
    first, second = (candidate, control) if position == "A" else (control, candidate)
    conversation = "\n\n".join(
        f"[{m.get('role', 'user')}]\n{m.get('content', '')}" for m in messages
    )
    user = (
        f"<conversation>\n{_fenced(conversation, MAX_JUDGED_CHARS, keep='tail')}\n"
        "</conversation>\n\n"
        f"<answer_a>\n{_fenced(first, MAX_JUDGED_CHARS, keep='head')}\n</answer_a>\n\n"
        f"<answer_b>\n{_fenced(second, MAX_JUDGED_CHARS, keep='head')}\n</answer_b>\n\n"
        "Which answer is better: A, B, or is it a tie? Reply with the JSON object only."
    )
    request = Request(
        messages=[
            {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        json_schema=judge_schema() if structured else None,
        timeout=timeout,
    )
    return JudgePrompt(request=request, candidate_position=position)


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeVerdict:
    """Which answer the judge preferred, in the arms' terms.

    ``winner`` is ``invalid`` when the judge's answer was unusable; ``error`` then says why
    (the judge call's error kind, ``unparsable``: no JSON object, ``no_winner``: no A, B or
    tie in it). ``judge_winner`` is what the judge said (A, B or tie) before un-swapping.
    """

    winner: Winner
    reason: str
    candidate_position: Position
    judge_winner: str | None = None
    error: str | None = None
    model: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float = 0.0

    @property
    def score(self) -> float | None:
        """Candidate minus control: 1 the candidate won, 0 a tie, -1 control won (the paired
        difference of the shadow statistics); ``None`` when invalid."""
        return {"candidate": 1.0, "tie": 0.0, "control": -1.0}.get(self.winner)

    def to_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "reason": self.reason,
            "score": self.score,
            "candidate_position": self.candidate_position,
            "judge_winner": self.judge_winner,
            "error": self.error,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": self.latency_ms,
        }


_WINNERS: dict[str, str] = {
    "a": "A",
    "answer a": "A",
    "assistant a": "A",
    "b": "B",
    "answer b": "B",
    "assistant b": "B",
    "tie": "tie",
    "draw": "tie",
}


def _verdict_object(text: str) -> dict[str, Any] | None:
    ok, value = parse_json(text)
    if not (ok and isinstance(value, dict)):
        # Judges without structured output often wrap the object in prose ("Verdict: {...}").
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            return None
        ok, value = parse_json(text[start : end + 1])
    return value if ok and isinstance(value, dict) else None


def parse_verdict(text: str, candidate_position: Position) -> JudgeVerdict:
    """The judge's answer ``text`` as a verdict, un-swapped: the judge's "A" is the candidate
    when ``candidate_position`` is ``"A"``, control otherwise."""
    value = _verdict_object(text)
    if value is None:
        return JudgeVerdict(
            winner="invalid", reason="", candidate_position=candidate_position, error="unparsable"
        )
    reason = value.get("reason")
    reason = (reason if isinstance(reason, str) else "")[:MAX_REASON_CHARS]
    said = value.get("winner")
    label = (
        _WINNERS.get(" ".join(said.strip(" []\"'.").casefold().split()))
        if isinstance(said, str)
        else None
    )
    if label is None:
        return JudgeVerdict(
            winner="invalid",
            reason=reason,
            candidate_position=candidate_position,
            error="no_winner",
        )
    winner: Winner
    if label == "tie":
        winner = "tie"
    else:
        winner = "candidate" if label == candidate_position else "control"
    return JudgeVerdict(
        winner=winner, reason=reason, candidate_position=candidate_position, judge_winner=label
    )


def judge(
    provider: Provider,
    messages: Sequence[Mapping[str, str]],
    control: str,
    candidate: str,
    rng: random.Random | int | str,
    *,
    structured: bool = True,
    timeout: float = 60.0,
) -> JudgeVerdict:
    """Ask the judge model behind ``provider`` which answer to ``messages`` is better.

    Never raises for a judge failure: a failed call is an ``invalid`` verdict whose ``error``
    is the call's error kind. The judge's tokens and latency are reported for its cost.
    """
    prompt = judge_request(
        messages, control, candidate, rng, structured=structured, timeout=timeout
    )
    position = prompt.candidate_position
    return _read(
        provider.complete(prompt.request),
        lambda error: JudgeVerdict(
            winner="invalid", reason="", candidate_position=position, error=error
        ),
        lambda text: parse_verdict(text, position),
    )


_Judged = TypeVar("_Judged", "JudgeVerdict", "JudgeScore")


def _read(
    result: Result, failed: Callable[[str], _Judged], parse: Callable[[str], _Judged]
) -> _Judged:
    """A judge call's answer parsed, or ``failed(error)`` when the call failed, carrying the
    call's model, tokens and latency (for its cost). invalid_output keeps the text: the
    parsers are more lenient than the adapter's check (they read an object out of prose), so
    they are tried before giving up."""
    if result.error is not None and (result.error != "invalid_output" or not result.text):
        judged = failed(result.error)
    else:
        judged = parse(result.text)
    return replace(
        judged,
        model=result.model,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        latency_ms=result.latency_ms,
    )


# --- the pointwise judge ----------------------------------------------------------------

#: The rubric a plan's pointwise judge scores on when the plan gives none.
DEFAULT_RUBRIC = (
    "5: correct, complete and helpful; answers exactly what was asked.\n"
    "4: correct and helpful, with a minor omission or imprecision.\n"
    "3: partly correct or partly helpful; a reader would need to ask again.\n"
    "2: mostly wrong, off-topic or unhelpful, though fluent.\n"
    "1: wrong, harmful, or not an answer to the question at all."
)
POINTWISE_SYSTEM_PROMPT = (
    "Please act as an impartial judge and score the answer an AI assistant gave to the "
    "conversation below, on the rubric given, from 1 (worst) to 5 (best). Judge correctness "
    "and helpfulness for the last user message; do not let the answer's length or style "
    "influence you. Reply with a single JSON object and nothing else: "
    '{"score": 1 | 2 | 3 | 4 | 5, "reason": "<one or two sentences>"}'
)
MAX_RUBRIC_CHARS = 4_000
_SCORE_TAGS = ("conversation", "answer", "rubric")


def score_schema() -> dict[str, Any]:
    """The pointwise verdict's JSON schema, in the strict structured-output form."""
    return {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
            "reason": {"type": "string"},
        },
        "required": ["score", "reason"],
        "additionalProperties": False,
    }


def score_request(
    messages: Sequence[Mapping[str, str]],
    answer: str,
    rubric: str = "",
    *,
    structured: bool = True,
    timeout: float = 60.0,
) -> Request:
    """The pointwise judge's :class:`Request`: the conversation, one answer and the rubric
    (:data:`DEFAULT_RUBRIC` when empty), each fenced so that text inside cannot close its
    block and speak as the instructions. The answer's arm is never named."""
    conversation = "\n\n".join(
        f"[{m.get('role', 'user')}]\n{m.get('content', '')}" for m in messages
    )
    tags = _SCORE_TAGS
    user = (
        f"<rubric>\n{_fenced(rubric or DEFAULT_RUBRIC, MAX_RUBRIC_CHARS, keep='head', tags=tags)}\n"
        "</rubric>\n\n"
        f"<conversation>\n{_fenced(conversation, MAX_JUDGED_CHARS, keep='tail', tags=tags)}\n"
        "</conversation>\n\n"
        f"<answer>\n{_fenced(answer, MAX_JUDGED_CHARS, keep='head', tags=tags)}\n</answer>\n\n"
        "Score the answer from 1 to 5 on the rubric. Reply with the JSON object only."
    )
    return Request(
        messages=[
            {"role": "system", "content": POINTWISE_SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ],
        json_schema=score_schema() if structured else None,
        timeout=timeout,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeScore:
    """A pointwise judge's score of one answer: 1-5, or ``None`` with ``error`` when its answer
    was unusable (the call's error kind, ``unparsable``: no JSON object, ``no_score``: no
    whole number from 1 to 5 in it). Unusable scores count nowhere."""

    score: int | None
    reason: str
    error: str | None = None
    model: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "reason": self.reason,
            "error": self.error,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": self.latency_ms,
        }


def parse_score(text: str) -> JudgeScore:
    """The pointwise judge's answer ``text`` as a score (a whole number 1-5; "4" and 4.0 are
    read, 4.5 and "four" are not)."""
    value = _verdict_object(text)
    if value is None:
        return JudgeScore(score=None, reason="", error="unparsable")
    reason = value.get("reason")
    reason = (reason if isinstance(reason, str) else "")[:MAX_REASON_CHARS]
    said = value.get("score")
    if isinstance(said, str) and said.strip().isdigit():
        said = int(said.strip())
    if isinstance(said, float) and said.is_integer():
        said = int(said)
    if isinstance(said, bool) or not isinstance(said, int) or not 1 <= said <= 5:
        return JudgeScore(score=None, reason=reason, error="no_score")
    return JudgeScore(score=said, reason=reason)


def score_answer(
    provider: Provider,
    messages: Sequence[Mapping[str, str]],
    answer: str,
    rubric: str = "",
    *,
    structured: bool = True,
    timeout: float = 60.0,
) -> JudgeScore:
    """Ask the judge model behind ``provider`` to score ``answer`` on ``rubric``. Never raises
    for a judge failure: a failed call is a score of ``None`` whose ``error`` is its kind."""
    return _read(
        provider.complete(
            score_request(messages, answer, rubric, structured=structured, timeout=timeout)
        ),
        lambda error: JudgeScore(score=None, reason="", error=error),
        parse_score,
    )
