"""The simulator's quality knob and its simulated judge (issue 15): wrong answers that only
reading tells apart, and a judge whose accuracy, position bias and length bias are set, so that
calibration and the judge's guardrails can be tested end to end without a vendor."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator

import pytest
from turnout import compare, judges
from turnout.providers import NO_RETRY, Provider, provider_class

from migrations_app.judge import calibration
from migrations_app.simulator import Profile, Simulator
from migrations_app.simulator.profiles import (
    WRONG_ANSWERS,
    Prompted,
    answers_question,
    generate,
)

QUESTION = "How do I reset my password on the mobile app?"
MESSAGES = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": QUESTION},
]
GOOD = f"You said: {QUESTION}"
WRONG = WRONG_ANSWERS[0]


def asked(question: str = QUESTION, **kwargs: object) -> Prompted:
    return Prompted(model="m", system="", messages=(question,), **kwargs)  # type: ignore[arg-type]


def test_quality_is_the_share_of_good_answers_and_the_others_are_fluent_and_wrong():
    rng = random.Random(1)
    profile = Profile(quality=0.8)
    answers = [generate(profile, asked(), rng) for _ in range(4000)]
    good = [a for a in answers if answers_question(QUESTION, a)]
    assert len(good) / len(answers) == pytest.approx(0.8, abs=0.02)
    wrong = [a for a in answers if not answers_question(QUESTION, a)]
    assert set(wrong) <= set(WRONG_ANSWERS)  # full sentences, no error, no refusal
    assert all(len(a) > 40 and a.endswith(".") for a in wrong)
    assert all(not compare.is_refusal(a) for a in wrong)
    # JSON asked for: every answer is valid JSON of the same shape; the wrong ones are about
    # something else.
    schema = {"type": "object", "properties": {"reply": {"type": "string"}}}
    shaped = [generate(profile, asked(json_wanted=True, schema=schema), rng) for _ in range(500)]
    values = [json.loads(a) for a in shaped]
    assert all(set(v) == {"reply"} for v in values)
    assert 0.7 < sum(answers_question(QUESTION, a) for a in shaped) / 500 < 0.9
    # The default is every answer good, as before the knob.
    assert all(generate(Profile(), asked(), rng) == GOOD for _ in range(50))


def test_answers_question_reads_the_answer_not_its_form():
    assert answers_question(QUESTION, GOOD)
    assert answers_question(QUESTION, json.dumps({"answer": QUESTION, "ok": True}))
    assert not answers_question(QUESTION, WRONG)
    # A masked email in the stored question costs a word, not the verdict.
    masked = "Please update my email to [EMAIL] today."
    assert answers_question(masked, "You said: Please update my email to jane@x.org today.")


# A seed with which judge_request shows the candidate first ("A").
FIRST = next(
    s for s in range(100) if judges.judge_request(MESSAGES, "", "", s).candidate_position == "A"
)


def judge_prompt(first: str, second: str) -> Prompted:
    """The judge prompt that shows ``first`` as A and ``second`` as B."""
    request = judges.judge_request(MESSAGES, second, first, FIRST).request
    return Prompted(model="judge", system=request.messages[0]["content"],
                    messages=(request.messages[1]["content"],), json_wanted=True)  # fmt: skip


def verdicts(profile: Profile, first: str, second: str, n: int = 2000) -> Counter[str]:
    """What the judge answers when shown ``first`` then ``second`` (as A and B)."""
    rng = random.Random(2)
    prompt = judge_prompt(first, second)
    said: Counter[str] = Counter()
    for _ in range(n):
        text = generate(profile, prompt, rng)
        said[judges.parse_verdict(text, "A").judge_winner or "invalid"] += 1
    return said


def test_an_accurate_judge_tells_good_from_wrong_in_either_order():
    judge = Profile(answer="judge")
    assert verdicts(judge, GOOD, WRONG, 50) == {"A": 50}
    assert verdicts(judge, WRONG, GOOD, 50) == {"B": 50}
    assert verdicts(judge, GOOD, GOOD, 50) == {"tie": 50}
    assert verdicts(judge, WRONG, WRONG_ANSWERS[1], 50) == {"tie": 50}


def test_accuracy_position_bias_and_length_bias():
    said = verdicts(Profile(answer="judge", judge_accuracy=0.7), GOOD, WRONG)
    assert said["A"] / 2000 == pytest.approx(0.7, abs=0.03)
    assert said["B"] == pytest.approx(said["tie"], rel=0.2)  # errors drawn from the others
    first = verdicts(Profile(answer="judge", judge_position_bias=0.4), WRONG, GOOD)
    assert first["A"] / 2000 == pytest.approx(0.4, abs=0.03)  # the wrong one, shown first
    longer = max(GOOD, WRONG, key=len)
    said = verdicts(Profile(answer="judge", judge_length_bias=0.5), GOOD, GOOD + " " * 0)
    assert said == {"tie": 2000}  # equal answers: nothing longer to prefer
    said = verdicts(Profile(answer="judge", judge_length_bias=0.5), WRONG, GOOD)
    assert longer == WRONG
    assert said["A"] / 2000 == pytest.approx(0.5, abs=0.03)


def test_unparsable_answers_hold_no_verdict():
    said = verdicts(Profile(answer="judge", judge_unparsable=0.25), GOOD, WRONG)
    assert said["invalid"] / 2000 == pytest.approx(0.25, abs=0.03)
    bare = generate(Profile(answer="judge"), asked("not a judge prompt"), random.Random(0))
    assert judges.parse_verdict(bare, "A").error == "unparsable"


def test_the_pointwise_judge_scores_good_answers_high_and_wrong_ones_low():
    rng = random.Random(3)

    def scores(answer: str, accuracy: float) -> list[int | None]:
        request = judges.score_request(MESSAGES, answer)
        prompt = Prompted(model="judge", system="", messages=(request.messages[1]["content"],))
        profile = Profile(answer="judge", judge_accuracy=accuracy)
        return [judges.parse_score(generate(profile, prompt, rng)).score for _ in range(1000)]

    assert set(scores(GOOD, 1.0)) == {4, 5} and set(scores(WRONG, 1.0)) == {1, 2}
    noisy = scores(WRONG, 0.8)
    assert sum(s >= 3 for s in noisy if s) / len(noisy) == pytest.approx(0.2, abs=0.04)


def test_bad_profiles_are_refused():
    for bad in ({"quality": 1.5}, {"judge_accuracy": -0.1}, {"quality": "high"},
                {"judge_position_bias": 0.6, "judge_length_bias": 0.6}):  # fmt: skip
        with pytest.raises(ValueError):
            Profile().updated(bad)


# --- end to end: the simulated judge through the SDK's judge() and the calibration ---------


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    profiles = {"judge": Profile(answer="judge", judge_accuracy=0.85, judge_position_bias=0.1,
                                 latency_median_ms=1.0, latency_p95_ms=2.0)}  # fmt: skip
    with Simulator(seed=5, profiles=profiles) as sim:
        yield sim


@pytest.fixture
def judge_model(simulator: Simulator) -> Iterator[Provider]:
    provider = provider_class("openai")(
        model="judge", api_key="sk-test", base_url=simulator.url + "/v1", retry=NO_RETRY
    )
    yield provider
    provider.close()


def test_calibration_measures_the_simulated_judge(judge_model: Provider) -> None:
    """People who read the answers right (the truth) against the simulated judge (85 %
    accurate, 10 % position bias) over 300 pairs through judge(): kappa well above the
    default floor, and the position bias shows as more than half of decisive verdicts for the
    answer shown first."""
    rng = random.Random(4)
    judge, human, first, decisive = [], [], 0, 0
    for i in range(300):
        control = GOOD if rng.random() < 0.9 else rng.choice(WRONG_ANSWERS)
        candidate = GOOD if rng.random() < 0.6 else rng.choice(WRONG_ANSWERS)
        verdict = judges.judge(judge_model, MESSAGES, control, candidate, i)
        c_good, k_good = answers_question(QUESTION, control), answers_question(QUESTION, candidate)
        truth = "tie" if c_good == k_good else ("candidate" if k_good else "control")
        judge.append(verdict.winner)
        human.append(truth)
        if verdict.judge_winner in ("A", "B"):
            decisive += 1
            first += verdict.judge_winner == "A"
    result = calibration.calibrate(judge, human, first_chosen=first, decisive=decisive)
    assert result.trusted, result.why
    assert result.kappa_lower > 0.5
    assert result.position.share > 0.5
