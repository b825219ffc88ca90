"""Per-model behaviour of the provider simulator: latency, errors, answers, usage.

Pure data and pure functions of a ``random.Random``: the server owns the generators (seeded,
one per model) and the locking; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

#: Error kinds the simulator can produce (the adapters' list minus the two that are judgments
#: of a successful answer, ``invalid_output`` and ``empty_output``, which come from the
#: ``degraded`` and ``empty`` answer generators instead), plus ``quota``: a 429 that says the
#: account is out of credit (OpenAI's ``insufficient_quota``), which must not be retried.
SIM_ERRORS = (
    "rate_limited",
    "quota",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "bad_request",
    "auth",
    "content_filter",
)
ANSWERS = ("echo", "canned", "json", "degraded", "refusal", "empty", "judge")
#: z-score of the 95th percentile of the standard normal: sigma = ln(p95 / median) / 1.645.
_Z95 = 1.6448536269514722
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """How one model behaves.

    Latency is lognormal with the given median and p95 (total, to the last byte); time to first
    token is ``ttft_fraction`` of it when streaming. ``errors`` maps kinds in
    :data:`SIM_ERRORS` to probabilities (their sum at most 1). ``fail_next`` is a script: the
    next requests fail with these kinds in order, before any random draw (deterministic tests
    of a retry that succeeds). ``answer`` picks the generator; ``json`` answers are also given
    whenever the request asked for JSON, except by ``degraded``, ``refusal`` and ``empty``.
    ``retry_after_s`` is sent on 429/503/529 (``None``: no header). ``hang_ms`` is how long a
    ``timeout`` error holds the request before answering (past any sane client timeout).

    Quality: ``quality`` is the share of good answers (echo and JSON answers only: they are
    about the question). The others are fluent and well formed but wrong for the question
    (:func:`wrong_answer`): no error, normal latency and usage, valid JSON when JSON was
    asked for; only reading them shows it (:func:`answers_question`).

    A judge (``answer="judge"``): the model answers Turnout's judge prompts, pairwise
    (``turnout.judges.judge_request``) and pointwise (``score_request``), by reading whether
    each answer answers the question. With ``judge_accuracy`` it says the truth; otherwise a
    verdict drawn from the others. Before that, with ``judge_position_bias`` it picks the
    answer shown first whatever they say, with ``judge_length_bias`` the longer one, and with
    ``judge_unparsable`` it answers prose that holds no verdict.

    Concurrency: with ``gather`` = k (> 1) each request for the model is held, before its
    latency, until k of them are inside the server at once; then those k go on together. Only
    a server answering requests concurrently ever opens it (one answering one at a time holds
    the first forever), however slow the machine: a test's proof that does not time anything.
    Requests past a multiple of k wait for the next k (or for the simulator to stop).
    """

    latency_median_ms: float = 20.0
    latency_p95_ms: float = 40.0
    ttft_fraction: float = 0.3
    errors: Mapping[str, float] = field(default_factory=dict)
    fail_next: Sequence[str] = ()
    answer: str = "echo"
    text: str = "Hello! How can I help you today?"
    usage: bool = True
    stream_chunks: int = 4
    retry_after_s: float | None = None
    hang_ms: float = 5000.0
    quality: float = 1.0
    judge_accuracy: float = 1.0
    judge_position_bias: float = 0.0
    judge_length_bias: float = 0.0
    judge_unparsable: float = 0.0
    gather: int = 0

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise ValueError(
                f"answer: unknown generator {self.answer!r}, expected one of {ANSWERS}"
            )
        for kind, rate in self.errors.items():
            if kind not in SIM_ERRORS:
                raise ValueError(f"errors: unknown kind {kind!r}, expected one of {SIM_ERRORS}")
            if not 0.0 <= float(rate) <= 1.0:
                raise ValueError(f"errors.{kind}: rate {rate!r} is not in [0, 1]")
        if sum(float(r) for r in self.errors.values()) > 1.0 + 1e-9:
            raise ValueError("errors: the rates add up to more than 1")
        for kind in self.fail_next:
            if kind not in SIM_ERRORS:
                raise ValueError(f"fail_next: unknown kind {kind!r}")
        if self.latency_median_ms < 0 or self.latency_p95_ms < self.latency_median_ms:
            raise ValueError("latency: need 0 <= median <= p95")
        if not 0.0 <= self.ttft_fraction <= 1.0:
            raise ValueError("ttft_fraction: not in [0, 1]")
        if self.stream_chunks < 1:
            raise ValueError("stream_chunks: at least 1")
        if isinstance(self.gather, bool) or not isinstance(self.gather, int) or self.gather < 0:
            raise ValueError(f"gather: expected a whole number, 0 or more, got {self.gather!r}")
        for name in ("quality", "judge_accuracy", "judge_position_bias", "judge_length_bias",
                     "judge_unparsable"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}: {value!r} is not in [0, 1]")
        if self.judge_position_bias + self.judge_length_bias + self.judge_unparsable > 1.0 + 1e-9:
            raise ValueError("judge biases: position, length and unparsable add up to more than 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = dict(self.errors)
        data["fail_next"] = list(self.fail_next)
        return data

    def updated(self, changes: Mapping[str, Any]) -> Profile:
        """A copy with ``changes`` applied (the body of ``PUT /_sim/profiles/{model}``);
        ``ValueError`` names an unknown field or a bad value."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown profile fields {unknown}")
        values = dict(changes)
        if "errors" in values:
            values["errors"] = {str(k): float(v) for k, v in dict(values["errors"]).items()}
        if "fail_next" in values:
            values["fail_next"] = tuple(values["fail_next"])
        try:
            return replace(self, **values)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def latency_s(self, rng: random.Random) -> float:
        """One draw of the total latency, in seconds."""
        if self.latency_median_ms <= 0:
            return 0.0
        sigma = math.log(self.latency_p95_ms / self.latency_median_ms) / _Z95
        return rng.lognormvariate(math.log(self.latency_median_ms), sigma) / 1000.0

    def draw_error(self, rng: random.Random) -> str | None:
        """One draw of the error kind (``None``: success). Always consumes one random number,
        so the sequence of draws does not depend on the rates (reproducible across changes)."""
        unit = rng.random()
        edge = 0.0
        for kind in SIM_ERRORS:
            edge += float(self.errors.get(kind, 0.0))
            if unit < edge:
                return kind
        return None


@dataclass(frozen=True, slots=True)
class Prompted:
    """What the simulator needs from a request, whatever the vendor format."""

    model: str
    system: str
    messages: tuple[str, ...]  # the non-system message texts, in order
    stream: bool = False
    json_wanted: bool = False
    schema: Mapping[str, Any] | None = None
    include_usage: bool = True  # OpenAI chat streams carry usage only when asked
    #: The request body as received (for tests that check what an adapter put on the wire).
    body: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def last(self) -> str:
        return self.messages[-1] if self.messages else ""


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _value_for(schema: Mapping[str, Any], prompt: str) -> Any:
    kind = schema.get("type")
    if kind == "object":
        return _object_for(schema, prompt)
    if kind == "array":
        items = schema.get("items")
        return [_value_for(items, prompt)] if isinstance(items, Mapping) else []
    if kind == "integer":
        return len(prompt)
    if kind == "number":
        return len(prompt) / 2
    if kind == "boolean":
        return True
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    return prompt


def _object_for(schema: Mapping[str, Any] | None, prompt: str) -> dict[str, Any]:
    properties = (schema or {}).get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return {"answer": prompt, "ok": True}
    return {
        str(name): _value_for(sub if isinstance(sub, Mapping) else {}, prompt)
        for name, sub in properties.items()
    }


def generate(profile: Profile, prompted: Prompted, rng: random.Random) -> str:
    """The answer text for a request under a profile."""
    if profile.answer == "judge":
        return judge_answer(profile, prompted, rng)
    if profile.answer == "empty":
        return ""
    if profile.answer == "refusal":
        return REFUSAL_TEXT
    if profile.answer == "degraded":
        # A worse answer, not a random one: half the words of what a good answer would be, in a
        # shuffled order, and a JSON answer cut short so that it no longer parses.
        good = generate(replace(profile, answer="echo", quality=1.0), prompted, rng)
        if prompted.json_wanted:
            return good[: max(1, len(good) // 2)]
        words = good.split()
        keep = words[: max(1, len(words) // 2)]
        rng.shuffle(keep)
        return " ".join(keep)
    # One draw per answer, always taken, so that a run's answers do not depend on the knob's
    # history (as draw_error does for errors).
    wrong = rng.random() >= profile.quality
    if profile.answer == "json" or prompted.json_wanted:
        about = wrong_answer(rng) if wrong else prompted.last
        return json.dumps(_object_for(prompted.schema, about))
    if profile.answer == "canned":
        return profile.text
    if not prompted.last:
        return profile.text
    return wrong_answer(rng) if wrong else f"You said: {prompted.last}"


# --- quality: good and wrong answers, and a judge that can tell them apart -----------------

#: Fluent, polite, well formed, and about something else than what was asked.
WRONG_ANSWERS = (
    "Thanks for reaching out! Our stores are open from 9 am to 6 pm, Monday to Saturday.",
    "Great question. The X200 blender comes in three colours: red, silver and matte black.",
    "Happy to help! Gift wrapping is available at checkout for a small additional fee.",
    "Our loyalty programme gives you one point for every dollar spent, redeemable online.",
    "You can find the spring collection on our website, with free returns within 30 days.",
    "Certainly. Our newsletter comes out every Friday and lists the week's best offers.",
)
_WORD = re.compile(r"[a-z0-9]+")


def wrong_answer(rng: random.Random) -> str:
    """A fluent answer to another question than the one asked (whatever was asked)."""
    return rng.choice(WRONG_ANSWERS)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.casefold()))


def answers_question(question: str, answer: str) -> bool:
    """Whether ``answer`` is about ``question``: most of the question's words are in it (a
    good simulated answer repeats the question, as text or in its JSON values; a masked
    email in the stored question costs a word, not the verdict). What the simulated judge,
    and the demo's labeller, read."""
    asked = _words(question)
    if not asked:
        return True
    return len(asked & _words(answer)) >= 0.6 * len(asked)


_BLOCK = re.compile(r"<(conversation|answer_a|answer_b|answer|rubric)>\n(.*?)\n</\1>", re.DOTALL)


def _blocks(prompt: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _BLOCK.finditer(prompt)}


def _question(conversation: str) -> str:
    """The last user message of a judge prompt's conversation block ("[user]\n...")."""
    parts = re.split(r"(?:^|\n\n)\[(system|user|assistant)\]\n", conversation)
    last = ""
    for role, content in zip(parts[1::2], parts[2::2], strict=False):
        if role == "user":
            last = content
    return last


def judge_answer(profile: Profile, prompted: Prompted, rng: random.Random) -> str:
    """A simulated judge's reply to a judge prompt: pairwise (two answers) or pointwise (one
    answer and a rubric). Not a judge prompt: a reply that holds no verdict."""
    blocks = _blocks(prompted.last)
    question = _question(blocks.get("conversation", ""))
    draw = rng.random()
    if draw < profile.judge_unparsable or "conversation" not in blocks:
        return "I would need to think about this more carefully before giving a verdict."
    draw -= profile.judge_unparsable
    if "answer" in blocks:  # pointwise
        good = answers_question(question, blocks["answer"])
        if rng.random() < profile.judge_accuracy:
            score = rng.choice((4, 5)) if good else rng.choice((1, 2))
        else:
            score = rng.choice((1, 2, 3) if good else (3, 4, 5))
        reason = "It answers the question." if good else "It does not answer the question."
        return json.dumps({"score": score, "reason": reason})
    first, second = blocks.get("answer_a", ""), blocks.get("answer_b", "")
    if draw < profile.judge_position_bias:
        return json.dumps({"winner": "A", "reason": "Answer A is better."})
    draw -= profile.judge_position_bias
    if draw < profile.judge_length_bias and len(first) != len(second):
        longer = "A" if len(first) > len(second) else "B"
        return json.dumps({"winner": longer, "reason": f"Answer {longer} is more thorough."})
    good_a, good_b = answers_question(question, first), answers_question(question, second)
    truth = "tie" if good_a == good_b else ("A" if good_a else "B")
    said = truth
    if rng.random() >= profile.judge_accuracy:
        said = rng.choice([w for w in ("A", "B", "tie") if w != truth])
    reason = {
        "A": "Answer A addresses the question; B does not.",
        "B": "Answer B addresses the question; A does not.",
        "tie": "Both answers are equally good.",
    }[said]
    return json.dumps({"winner": said, "reason": reason})


def chunks(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` pieces (fewer when it is shorter), joined back exactly."""
    if not text:
        return []
    size = max(1, math.ceil(len(text) / count))
    return [text[i : i + size] for i in range(0, len(text), size)]
