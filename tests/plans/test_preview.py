"""The plan form's preview (pure): the stages with their minimums, the time and the monthly
cost at a traffic, and the guardrails in plain words."""

from __future__ import annotations

import pytest

from migrations_app.plans.phases import STANDARD_GUARDRAILS, STANDARD_PLAYBOOK
from migrations_app.plans.preview import (
    MINUTES_PER_MONTH,
    Prices,
    Traffic,
    duration_text,
    guardrail_sentence,
    plan_preview,
    timeline,
)

GPT4O = Prices(2.5, 10.0)
SONNET = Prices(3.0, 15.0)


def test_the_standard_playbook_as_a_timeline_with_its_minimums() -> None:
    stages = timeline(STANDARD_PLAYBOOK)
    assert [(s.number, s.phase, s.title) for s in stages] == [
        (1, 1, "Shadow"),
        (2, 2, "A/B split"),
        (3, 3, "Rollout, step 1 of 4"),
        (4, 3, "Rollout, step 2 of 4"),
        (5, 3, "Rollout, step 3 of 4"),
        (6, 3, "Rollout, step 4 of 4"),
    ]
    assert [s.candidate_share for s in stages] == [0.0, 0.1, 0.1, 0.25, 0.5, 1.0]
    assert stages[0].shadow_rate == 0.1 and stages[1].shadow_rate == 0.0
    assert stages[0].description.startswith("10 % of requests copied to the candidate")
    assert stages[1].description == "10 % of users on the candidate, 90 % on control"
    assert stages[-1].description == "every user on the candidate"
    assert stages[0].waits_for == "at least 1 h and 500 shadow answers from the candidate"
    assert stages[1].waits_for == "at least 2 h and 2,000 requests on each arm"
    assert stages[-1].waits_for == "at least 30 min and 1,000 requests on the candidate"
    preview = plan_preview(
        phases=STANDARD_PLAYBOOK, guardrails=[], alpha=0.05,
        circuit_breaker_error_rate=0.2, circuit_breaker_min_requests=50,
    )  # fmt: skip
    # 60 + 120 + 4 steps of 30.
    assert preview.minimum_minutes == 300
    assert preview.expected_minutes is None and preview.cost is None


def test_at_a_traffic_each_stage_takes_the_longer_of_its_duration_and_its_samples() -> None:
    # 100 requests a minute: shadow copies 10 a minute (500 in 50 min < 60 min); the split's
    # candidate arm gets 10 a minute (2,000 in 200 min > 120 min); rollout 10 % -> 1,000 in
    # 100 min, 25 % -> 40 min, 50 % -> 30 min (20 min of samples), 100 % -> 30 min.
    stages = timeline(STANDARD_PLAYBOOK, traffic=Traffic(100, 500, 200))
    assert [s.expected_minutes for s in stages] == [60, 200, 100, 40, 30, 30]
    preview = plan_preview(
        phases=STANDARD_PLAYBOOK, guardrails=[], alpha=0.05, circuit_breaker_error_rate=0.2,
        circuit_breaker_min_requests=50, traffic=Traffic(100, 500, 200),
    )  # fmt: skip
    assert preview.expected_minutes == 460
    # No traffic at all: the samples never come, and the preview says it does not know.
    idle = timeline(STANDARD_PLAYBOOK, traffic=Traffic(0, 500, 200))
    assert idle[0].expected_minutes is None


def test_monthly_cost_per_stage_and_before_and_after() -> None:
    traffic = Traffic(requests_per_minute=100, input_tokens=1000, output_tokens=500)
    control = GPT4O.per_request(1000, 500)  # 0.0025 + 0.005
    candidate = SONNET.per_request(1000, 500)  # 0.003 + 0.0075
    assert control == pytest.approx(0.0075) and candidate == pytest.approx(0.0105)
    preview = plan_preview(
        phases=STANDARD_PLAYBOOK, guardrails=STANDARD_GUARDRAILS, alpha=0.05,
        circuit_breaker_error_rate=0.2, circuit_breaker_min_requests=50,
        traffic=traffic, control=GPT4O, candidate=SONNET, shadow_budget_per_day=25.0,
    )  # fmt: skip
    month = 100 * MINUTES_PER_MONTH
    cost = preview.cost
    assert cost is not None
    assert cost.monthly_now == pytest.approx(month * control)
    assert cost.monthly_after == pytest.approx(month * candidate)
    assert cost.change == pytest.approx(0.4)
    # Shadow: all of control's traffic plus the candidate's copies of 10 % of it.
    shadow, split = preview.stages[0], preview.stages[1]
    assert shadow.monthly_cost == pytest.approx(month * (control + 0.1 * candidate))
    assert split.monthly_cost == pytest.approx(month * (0.9 * control + 0.1 * candidate))
    assert preview.stages[-1].monthly_cost == pytest.approx(cost.monthly_after)
    assert cost.shadow_per_day == pytest.approx(100 * 1440 * 0.1 * candidate)
    assert cost.shadow_budget_per_day == 25.0


def test_guardrails_in_plain_words() -> None:
    sentences = [guardrail_sentence(g, has_shadow=True) for g in STANDARD_GUARDRAILS]
    assert sentences == [
        "Roll back (all traffic to control, on-call paged) if the candidate's error rate is "
        "more than 1.5× control's.",
        "Roll back (all traffic to control, on-call paged) if the candidate's p95 latency is "
        "more than 1.3× control's.",
        "Roll back (all traffic to control, on-call paged) if user satisfaction with the "
        "candidate is more than 0.1 below control's (on a 0-1 scale) (not in shadow: no user "
        "sees the candidate's answers there).",
        "Alert on-call, traffic unchanged, if the candidate's cost per request is more than "
        "1.2× control's.",
    ]
    absolute = guardrail_sentence(
        {"metric": "error_rate", "tolerance_kind": "absolute", "tolerance": 0.03,
         "action": "pause", "min_samples": 2000},
        has_shadow=False,
    )  # fmt: skip
    assert absolute == (
        "Pause (traffic back on control until a person resumes) if the candidate's error rate "
        "is more than 3 percentage points above control's, once each arm has 2,000 requests."
    )
    latency = guardrail_sentence(
        {"metric": "latency_p99", "tolerance_kind": "absolute", "tolerance": 1500},
        has_shadow=False,
    )
    assert "p99 latency is more than 1,500 ms above control's" in latency


def test_the_plan_wide_protections_are_said_too() -> None:
    preview = plan_preview(
        phases=STANDARD_PLAYBOOK, guardrails=STANDARD_GUARDRAILS, alpha=0.05,
        circuit_breaker_error_rate=0.2, circuit_breaker_min_requests=50,
    )  # fmt: skip
    assert preview.safety[0] == (
        "Roll back at once, without statistics, if the candidate's error rate passes 20 % "
        "after 50 requests."
    )
    assert "at most 5 % of the time (alpha 0.05)" in preview.safety[1]
    bare = plan_preview(
        phases=STANDARD_PLAYBOOK, guardrails=[], alpha=0.05,
        circuit_breaker_error_rate=0.2, circuit_breaker_min_requests=50,
    )  # fmt: skip
    assert bare.safety[1] == "No guardrail: only the circuit breaker can roll this plan back."


@pytest.mark.parametrize(
    ("minutes", "text"),
    [(0, "0 min"), (45, "45 min"), (60, "1 h"), (90, "1 h 30 min"), (1440, "1 d"),
     (1440 + 240, "1 d 4 h"), (59.2, "1 h")],
)  # fmt: skip
def test_durations_read_as_people_say_them(minutes: float, text: str) -> None:
    assert duration_text(minutes) == text
