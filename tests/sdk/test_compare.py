"""turnout.compare on hand-made pairs with known answers (the judges: test_judges.py)."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest
from turnout import compare as c

# --- exact and normalised match ---------------------------------------------------------


def test_exact_match_is_exact() -> None:
    assert c.compare("Paris", "Paris").exact_match is True
    assert c.compare("Paris", "Paris ").exact_match is False
    assert c.compare("Paris", "paris").exact_match is False
    assert c.compare("", "").exact_match is True


@pytest.mark.parametrize(
    ("control", "candidate"),
    [
        ("Hello, World!", "hello world"),
        ("  The answer:\n\n42.  ", "the answer 42"),
        ("ＨＥＬＬＯ", "hello"),  # full-width forms (NFKC)
        ("ﬁne", "fine"),  # ligature (NFKC)
        (unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")),
        ("Straße", "STRASSE"),  # casefold, not lower()
        ("zero\u200bwidth", "zerowidth"),  # format characters are invisible
        ("**Paris**", "Paris"),  # Markdown emphasis is punctuation
        ("`ls -la`", "ls la"),
        ("«Bonjour» — dit-il", "bonjour dit il"),
        ("!!!", "?"),  # nothing but punctuation on both sides
    ],
)
def test_normalized_match(control: str, candidate: str) -> None:
    result = c.compare(control, candidate)
    assert result.normalized_match is True
    assert result.similarity == 1.0  # a normalised match always scores 1


@pytest.mark.parametrize(
    ("control", "candidate"),
    [
        ("3.14", "314"),  # punctuation separates, it does not glue
        ("café", "cafe"),  # accents are kept
        ("yes", "no"),
        ("dog bites man", "man bites dog"),
        ("", "x"),
    ],
)
def test_normalized_mismatch(control: str, candidate: str) -> None:
    assert c.compare(control, candidate).normalized_match is False


# --- similarity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("control", "candidate", "expected"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("the cat sat", "a dog ran", 0.0),
        ("a b c d", "a b", 2 * 2 / 6),
        ("a a b", "a b b", 2 * 2 / 6),  # multisets: one "a" and one "b" in common
        ("dog bites man", "man bites dog", 1.0),  # order is not seen
        ("The answer is 42.", "the ANSWER is 41", 2 * 3 / 8),
        ("我爱北京", "我爱上海", 2 * 2 / 8),  # Han: one token per character
        ("東京 タワー", "東京タワー", 1.0),
        ("", "", 1.0),
        ("", "something", 0.0),
        ("something", "", 0.0),
        ("...", "hello", 0.0),
    ],
)
def test_similarity_known_values(control: str, candidate: str, expected: float) -> None:
    assert c.compare(control, candidate).similarity == pytest.approx(expected)
    assert c.similarity(candidate, control) == pytest.approx(expected)  # symmetric


def test_similarity_of_the_simulators_degraded_answer() -> None:
    """Half the words, shuffled: F1 = 2 * 0.5 * 1 / 1.5 = 2/3, whatever the shuffle."""
    good = " ".join(f"w{i}" for i in range(40))
    words = good.split()[:20]
    random.Random(1).shuffle(words)
    assert c.similarity(good, " ".join(words)) == pytest.approx(2 / 3)


def test_tokens() -> None:
    assert c.tokens("Ｈｉ, 我爱 ﬁne café!") == ["hi", "我", "爱", "fine", "café"]
    assert c.tokens("") == []


# --- length ratio -----------------------------------------------------------------------


def test_length_ratio() -> None:
    assert c.compare("ab", "abcd").length_ratio == 2.0
    assert c.compare("abcd", "ab").length_ratio == 0.5
    assert c.compare("abcd", "").length_ratio == 0.0
    assert c.compare("", "abcd").length_ratio is None
    assert c.compare("", "").length_ratio is None
    assert c.compare("日本", "日本語").length_ratio == 1.5  # characters, not bytes
    result = c.compare("ab", "abc")
    assert (result.control_chars, result.candidate_chars) == (2, 3)


# --- JSON -------------------------------------------------------------------------------


def test_json_not_expected_gives_no_json_scores() -> None:
    result = c.compare('{"a": 1}', '{"a": 2}')
    assert result.json_valid is None
    assert result.control_json_valid is None
    assert result.json_diff is None


def test_json_validity_is_the_candidates() -> None:
    both = c.compare('{"a": 1}', '{"a": 1}', json_expected=True)
    assert (both.json_valid, both.control_json_valid) == (True, True)
    assert both.json_diff is not None and both.json_diff["equal"] is True

    broken = c.compare('{"a": 1}', '{"a": 1', json_expected=True)
    assert (broken.json_valid, broken.control_json_valid, broken.json_diff) == (False, True, None)

    control_broken = c.compare("not json", '{"a": 1}', json_expected=True)
    assert control_broken.json_valid is True
    assert control_broken.control_json_valid is False
    assert control_broken.json_diff is None

    assert c.compare('{"a": 1}', "", json_expected=True).json_valid is False


def test_fenced_json_is_valid_and_diffed() -> None:
    fenced = '```json\n{"a": 1, "b": [1, 2]}\n```'
    result = c.compare('{"a": 1}', fenced, json_expected=True)
    assert result.json_valid is True
    assert result.json_diff is not None
    assert result.json_diff["added"] == [{"path": "b", "value": [1, 2]}]
    assert c.parse_json("```\n[1]\n```") == (True, [1])
    assert c.parse_json("Here it is: ```json\n[1]\n```") == (False, None)


def test_nested_json_diff() -> None:
    control = {
        "a": {"b": [1, 2, 3], "c": "x", "g": [{"h": 1}]},
        "d": True,
        "e": None,
        "x y": 1,
        "n": 1,
    }
    candidate = {
        "a": {"b": [1, 2, 4, 5], "c": "x", "g": [{"h": 2, "i": 0}]},
        "d": 1,
        "f": {"k": 2},
        "x y": 1,
        "n": 1.0,
    }
    result = c.compare(json.dumps(control), json.dumps(candidate), json_expected=True)
    diff = result.json_diff
    assert diff is not None
    assert diff["changed"] == [
        {"path": "a.b[2]", "control": 3, "candidate": 4},
        {"path": "a.g[0].h", "control": 1, "candidate": 2},
        {"path": "d", "control": True, "candidate": 1},  # JSON true is not the number 1
    ]
    assert diff["added"] == [
        {"path": "a.b[3]", "value": 5},
        {"path": "a.g[0].i", "value": 0},
        {"path": "f", "value": {"k": 2}},
    ]
    assert diff["removed"] == [{"path": "e", "value": None}]
    assert diff["counts"] == {"added": 3, "removed": 1, "changed": 3}
    assert diff["equal"] is False and diff["truncated"] is False


def test_json_diff_paths_and_types() -> None:
    assert c.json_diff([1, 2, 3], [1])["removed"] == [
        {"path": "[1]", "value": 2},
        {"path": "[2]", "value": 3},
    ]
    assert c.json_diff({"x.y": 1, "é": 1}, {"x.y": 2, "é": 2})["changed"] == [
        {"path": '["x.y"]', "control": 1, "candidate": 2},
        {"path": '["é"]', "control": 1, "candidate": 2},
    ]
    assert c.json_diff({"a": [1]}, [1])["changed"] == [
        {"path": "$", "control": {"a": [1]}, "candidate": [1]}
    ]
    assert c.json_diff("1", 1)["changed"][0]["path"] == "$"
    assert c.json_diff({"a": {"b": 1}}, {"a": []})["changed"] == [
        {"path": "a", "control": {"b": 1}, "candidate": []}
    ]
    assert c.json_diff(1, 1.0)["equal"] is True
    assert c.json_diff(float("nan"), float("nan"))["equal"] is True
    assert c.json_diff(None, False)["equal"] is False


def test_json_diff_is_bounded() -> None:
    control = {"keep": "x" * 1000}
    candidate = {"keep": "y" * 1000, **{f"k{i}": i for i in range(1000)}}
    diff = c.json_diff(control, candidate)
    assert diff["counts"] == {"added": 1000, "removed": 0, "changed": 1}
    assert len(diff["added"]) + len(diff["changed"]) == c.MAX_DIFF_ENTRIES
    assert diff["truncated"] is True
    changed = diff["changed"][0]
    assert changed["path"] == "keep"
    # A long value is the start of its JSON, marked: never the whole 1000 characters.
    assert isinstance(changed["control"], str) and changed["control"].startswith('"xxx')
    assert changed["control"].endswith("… (1002 chars)")
    assert len(changed["control"]) < 250
    assert diff["added"][0] == {"path": "k0", "value": 0}  # document order
    assert len(json.dumps(diff)) < 10_000


def test_deeply_nested_json() -> None:
    """A model gone wrong can nest deeper than Python recurses: not JSON, not a crash."""
    assert c.parse_json("[" * 100_000 + "]" * 100_000) == (False, None)
    result = c.compare("[1]", "[" * 100_000, json_expected=True)
    assert result.json_valid is False
    left: list[object] = []
    right: list[object] = []
    deep_left, deep_right = left, right
    for _ in range(20_000):  # beyond the recursion limit, built without recursion
        deep_left.append([])
        deep_right.append([])
        deep_left, deep_right = deep_left[0], deep_right[0]  # type: ignore[assignment]
    deep_right.append(1)
    diff = c.json_diff(left, right)
    assert diff["counts"] == {"added": 1, "removed": 0, "changed": 0}
    assert diff["added"][0]["path"] == "[0]" * 20_001


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that request.",  # the simulator's refusal
        "I can’t assist with that.",  # curly apostrophe
        "Sorry, I cannot do that.",
        "I am unable to provide instructions for this.",
        "I won't be able to help with this one.",
        "I'm not able to write that.",
        "I must decline.",
        "I'm sorry, but I can't.",
        "I apologise, but I will not",
        "As an AI language model, I cannot browse the internet.",
        "That's not something I can help with.",
        "This request goes against my guidelines.",
        "**I can NOT comply with this request.**",
        "Thank you for asking. Unfortunately I can't help with requests like this.",
    ],
)
def test_refusals(text: str) -> None:
    assert c.is_refusal(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "Paris is the capital of France.",
        "I'm sorry for the confusion; here is the corrected code.",
        "I can't help but notice that the loop never ends.",
        "I cannot reproduce the bug, but try clearing the cache.",
        "As an AI, I do not have opinions, but here are both views.",
        "Sorry to hear that! Restart the router first.",
        "",
        # Long, helpful answers that quote a refusal after their opening.
        "Here is a detailed walkthrough. " * 15 + "The bot replied: I can't help with that.",
        "Here is a detailed walkthrough. " * 300 + "The bot replied: I can't help with that.",
    ],
)
def test_not_refusals(text: str) -> None:
    assert c.is_refusal(text) is False


def test_refusal_checks_both_arms() -> None:
    refusal = "I'm sorry, but I can't help with that request."
    only_candidate = c.compare("Sure, here it is.", refusal)
    assert (only_candidate.refusal, only_candidate.control_refusal) == (True, False)
    assert only_candidate.candidate_refusal is True
    both = c.compare(refusal, refusal)
    assert (both.refusal, both.control_refusal, both.candidate_refusal) == (False, True, True)
    only_control = c.compare(refusal, "Sure, here it is.")
    assert (only_control.refusal, only_control.control_refusal) == (False, True)
    assert only_control.candidate_refusal is False


# --- the dictionary the shadow pipeline aggregates --------------------------------------


def test_to_dict_has_the_aggregated_keys_with_their_types() -> None:
    data = c.compare("Hello there", "hello, there!", json_expected=False).to_dict()
    assert data["exact_match"] is False and data["normalized_match"] is True
    assert data["json_valid"] is None and data["json_diff"] is None
    assert data["similarity"] == 1.0 and data["refusal"] is False
    assert data["length_ratio"] == pytest.approx(13 / 11)
    json.dumps(data)  # stored as JSON
    with pytest.raises(AttributeError):
        c.compare("a", "b").similarity = 0.5  # type: ignore[misc]


# --- long texts: linear algorithms, no size cap (these would not finish if quadratic) ----


def test_long_texts_are_scored_whole() -> None:
    words = [f"word{i % 5000}" for i in range(200_000)]
    control = " ".join(words)
    reversed_text = " ".join(reversed(words))
    result = c.compare(control, reversed_text)
    assert result.similarity == 1.0  # every word of both 1.4 MB texts counted, none skipped
    assert result.normalized_match is False and result.exact_match is False
    assert c.similarity(control, " ".join(words[:100_000])) == pytest.approx(2 / 3)
    # A difference only at the very end is seen: no prefix cap.
    assert c.similarity(control, control + " extra") < 1.0
    assert c.is_refusal("I can't help with that. " + "x" * 5_000_000) is True


def test_long_json_is_diffed_whole() -> None:
    control = {f"k{i}": {"v": i, "list": list(range(10))} for i in range(20_000)}
    candidate = {key: dict(value) for key, value in control.items()}
    candidate["k19999"] = {"v": -1, "list": list(range(10))}
    result = c.compare(json.dumps(control), json.dumps(candidate), json_expected=True)
    assert result.json_diff is not None
    assert result.json_diff["changed"] == [{"path": "k19999.v", "control": 19999, "candidate": -1}]
