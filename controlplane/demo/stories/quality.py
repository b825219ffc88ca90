"""The second story (``make demo STORY=quality``): a candidate that is faster and cheaper, never
errors more, and answers worse. Turnout stops it on quality before users see it.

The plan ``demo-quality`` migrates support chat from GPT-4o to Claude Haiku 3.5 on the
simulator, as the first story does, but here the candidate's failure is quiet: one answer in five
is fluent, polite and about something else than what was asked (the simulator's ``quality``
knob, 0.8). Its latency, errors and cost are those of a good migration. Two things watch the
answers:

- in shadow, a judge model (GPT-4o mini on the simulator, ``answer: judge``) compares each pair
  blind; its preference is a guardrail ("the candidate may lose at most 5 points net", action
  pause). Until people have checked the judge it may only alert: the demo labels pairs through
  the labelling API as an engineer would on the judge page (one key a pair, the answers shown
  blind, its verdict from reading whether each answer answers the question), until the plan's
  floor (30 labels, kappa's lower bound >= 0.4) is met. The judge's guardrail then holds the
  plan: paused in shadow, paged, no user ever served by the candidate.
- the application reports whether the user's task got done, ``client.metric(decision,
  "task_completed", 0 or 1)``: likelier when the answer answers the question. The plan declares
  the metric (a rate, higher is better) and guards it (a drop of more than 3 points rolls back).
  While the judge is not trusted its regressed guardrail alerts, and an alert does not let the
  shadow advance either: the plan waits in shadow for a person. ``STORY=quality-split`` is the
  same candidate on a plan with no shadow and no judge (an A/B split first): task_completed
  rolls it back in the split.

Timeline with the default timings: see the README ("make demo STORY=quality"). ``--fast``
(tests/test_demo_quality*.py) evaluates every 2 s and is done once the engine has paused or rolled back
the plan and the page has arrived.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from controlplane.demo import say
from controlplane.demo.stories.regression import CANDIDATE, CONTROL, sim_profiles
from controlplane.demo.story import Narrator, Story, demo_actor, sim_model, webhook_channel
from controlplane.demo.traffic import Traffic

PLAN = "demo-quality"
JUDGE = ("openai", "gpt-4o-mini-2024-07-18")
QUALITY = 0.8  # the candidate's share of good answers
JUDGE_ACCURACY = 0.97
MIN_LABELS = 30
LABEL_BATCH = 10  # pairs an engineer labels between two looks at the page
# Whether the user's task got done: likelier with an answer to their question.
DONE_IF_ANSWERED, DONE_IF_NOT = 0.85, 0.25
# Requests a second. With a shadow, 10: every request is also a candidate call and a judge
# call in the workers, which must keep up for the engine's evaluations to run on time (they
# share the queue); the split alone takes the first story's 20, and its test (--fast) 40: the
# rollback waits until the task_completed reports carry the bound past the tolerance (500 to
# 1,450 per arm in the runs measured, the candidate about 10 points down, the tolerance 3),
# and 40 a second send as many in half the time.
SPLIT_RATE = 20.0
FAST_SPLIT_RATE = 40.0

GUARDRAILS = [
    {"metric": "error_rate", "tolerance_kind": "absolute", "tolerance": 0.03, "action": "rollback"},
    {"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"},
    {"metric": "cost_per_request", "tolerance_kind": "relative", "tolerance": 1.2,
     "action": "alert"},
    {"metric": "judge_preference", "tolerance_kind": "absolute", "tolerance": 0.05,
     "action": "pause"},
    {"metric": "task_completed", "tolerance_kind": "absolute", "tolerance": 0.03,
     "action": "rollback"},
]  # fmt: skip
METRICS = [
    {"name": "task_completed", "kind": "rate", "direction": "higher_is_better",
     "description": "The user's task got done after the answer (the support app's own signal)."},
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Timings:
    shadow_minutes: int
    shadow_samples: int
    split_minutes: int
    split_samples: int
    evaluation_interval: float
    rate: float  # requests a second
    label_after: float  # seconds into the shadow before the engineer starts labelling

    def phases(self, shadow: bool = True) -> list[dict[str, Any]]:
        return [
            {"kind": "shadow", "percent": 100.0, "steps": [],
             "min_duration_minutes": self.shadow_minutes, "min_samples": self.shadow_samples},
        ][: int(shadow)] + [
            {"kind": "ab_split", "percent": 50.0, "steps": [],
             "min_duration_minutes": self.split_minutes, "min_samples": self.split_samples},
            {"kind": "rollout", "percent": None, "steps": [75, 100],
             "min_duration_minutes": 2, "min_samples": 400},
        ]  # fmt: skip


DEFAULT_TIMINGS = Timings(
    shadow_minutes=1, shadow_samples=300, split_minutes=1, split_samples=600,
    evaluation_interval=5.0, rate=10.0, label_after=15.0,
)  # fmt: skip
FAST_TIMINGS = Timings(
    shadow_minutes=0, shadow_samples=300, split_minutes=0, split_samples=1_000_000,
    evaluation_interval=2.0, rate=10.0, label_after=3.0,
)  # fmt: skip


def quality_profiles() -> dict[str, dict[str, Any]]:
    """The first story's models, the candidate answering worse in one case in five, and the
    judge."""
    profiles = sim_profiles(filtered=0.012)
    profiles[CANDIDATE[1]] = {**profiles[CANDIDATE[1]], "quality": QUALITY}
    profiles[JUDGE[1]] = {
        "answer": "judge", "judge_accuracy": JUDGE_ACCURACY,
        "latency_median_ms": 250.0, "latency_p95_ms": 500.0,
    }  # fmt: skip
    return profiles


class TaskTraffic(Traffic):
    """The first story's application, which also reports ``task_completed`` per answer."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rng = random.Random(11)

    def served(self, done: Any, question: str) -> None:
        from migrations_app.simulator.profiles import answers_question

        if done.error:
            return
        chance = DONE_IF_ANSWERED if answers_question(question, done.text) else DONE_IF_NOT
        with self.lock:
            completed = self.rng.random() < chance
        self.client.metric(done.decision, "task_completed", int(completed))
        self.count(f"task:{done.arm}", *(("done:" + done.arm,) if completed else ()))

    def describe(self, counts: Counter[str], latencies: list[float], seconds: float) -> str:
        shares = ", ".join(
            f"{arm} {counts[f'done:{arm}'] / counts[f'task:{arm}']:.0%}"
            for arm in ("control", "candidate")
            if counts[f"task:{arm}"]
        )
        return super().describe(counts, latencies, seconds) + f"; tasks completed: {shares}"


class Quality(Story):
    """A candidate worse only in quality: held in shadow on the judge once people trust it,
    or rolled back in the split on the application's task_completed."""

    plan = PLAN
    done_line = "the engine stopped the candidate on quality and the page arrived"
    shadow = True  # a shadow phase with the judge first; without: the split, no judge

    default_timings = DEFAULT_TIMINGS
    fast_timings = FAST_TIMINGS
    event_field = "label_after"

    def __init__(
        self, *, fast: bool, rate: float | None = None, event_after: float | None = None
    ) -> None:
        if not self.shadow:
            rate = rate or (FAST_SPLIT_RATE if fast else SPLIT_RATE)
        super().__init__(fast=fast, rate=rate, event_after=event_after)
        self.admin_key = ""
        self.labelled = 0
        self.trusted = False
        self.started_at: float | None = None
        self.told_end = False

    def profiles(self) -> dict[str, dict[str, Any]]:
        return quality_profiles()

    def setup(self, *, hook_url: str, sim_url: str) -> str:
        """A fresh ``demo-quality`` plan with a judge and a declared metric, started."""
        from migrations_app.api.keys import apikey_create
        from migrations_app.models import MigrationPlan
        from migrations_app.plans import edits, lifecycle

        user, actor = demo_actor()
        MigrationPlan.objects.filter(key=self.plan).delete()  # a fresh demo each time
        channel = webhook_channel(hook_url)
        params = {"temperature": 0.2, "max_tokens": 512}
        judge: dict[str, Any] = {}
        if self.shadow:
            judge = {"judge_model": sim_model(*JUDGE, sim_url), "judge_min_labels": MIN_LABELS}
        plan = edits.plan_create(
            key=self.plan,
            name="Demo: support chat, a cheaper model that answers worse",
            description="make demo STORY=quality: the judge and task_completed stop it.",
            control={"model": sim_model(*CONTROL, sim_url), "params": params},
            candidate={"model": sim_model(*CANDIDATE, sim_url), "params": params},
            phases=self.timings.phases(self.shadow),
            guardrails=[g for g in GUARDRAILS if self.shadow or g["metric"] != "judge_preference"],
            metrics=METRICS,
            owner=user,
            actor=actor,
            **judge,
        )
        plan.alert_channels.add(channel)
        lifecycle.plan_start(plan_key=self.plan, actor=actor, reason="make demo STORY=quality")
        self.admin_key = apikey_create(name="demo labeller", scopes=["admin"])[1]
        return apikey_create(name="demo", scopes=["decide", "report"])[1]

    def traffic(self, client: Any, stop: Any) -> Traffic:
        return TaskTraffic(client, self.plan, self.rate, stop)

    def step(self, plan: Any, narrator: Narrator, now: float) -> None:
        since = narrator.stage_seen.get("shadow")
        if self.started_at is None and narrator.stage_seen:
            self.started_at = min(narrator.stage_seen.values())
        if (
            not self.trusted
            and since is not None
            and plan.status == "running"
            and now - since >= self.timings.label_after
        ):
            self.label(narrator)
        if narrator.rolled_back_at is not None or plan.status == "paused":
            if not self.told_end and self.started_at is not None:
                self.told_end = True
                seen = {k: t for k, t in narrator.stage_seen.items() if k != "recovery"}
                stage = max(seen, key=seen.__getitem__) if seen else "?"
                say(f"stopped on quality in {stage}, {now - self.started_at:.0f} s after the start")

    def label(self, narrator: Narrator) -> None:
        """One look at the judge page: label up to LABEL_BATCH pairs blind, as an engineer
        would (through the labelling API the page uses), and read the calibration back."""
        import httpx

        from migrations_app.simulator.profiles import answers_question

        base, key = os.environ["SITE_URL"], self.plan
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        got = httpx.get(
            f"{base}/api/v1/plans/{key}/label-pairs", params={"count": LABEL_BATCH},
            headers=headers, timeout=10,
        )  # fmt: skip
        got.raise_for_status()
        labels = []
        for pair in got.json()["pairs"]:
            question = next(
                (m["content"] for m in reversed(pair["messages"]) if m["role"] == "user"), ""
            )
            good_a = answers_question(question, pair["answer_a"])
            good_b = answers_question(question, pair["answer_b"])
            choice = "tie" if good_a == good_b else ("a" if good_a else "b")
            labels.append({"pair": pair["pair"], "choice": choice})
        if not labels:
            return
        sent = httpx.post(
            f"{base}/api/v1/plans/{key}/labels", json={"labels": labels}, headers=headers,
            timeout=10,
        )  # fmt: skip
        sent.raise_for_status()
        self.labelled += len(labels)
        trust = sent.json().get("calibration") or {}
        self.trusted = bool(trust.get("trusted"))
        kappa = trust.get("kappa")
        lower, upper = trust.get("kappa_lower"), trust.get("kappa_upper")
        # A kappa may come without its interval (too few labels of one kind to bound it).
        shown = "n/a" if kappa is None else f"{kappa:.2f}"
        if kappa is not None and lower is not None and upper is not None:
            shown += f" [{lower:.2f}, {upper:.2f}]"
        say(
            f"an engineer labelled {self.labelled} shadow pairs blind (labelling API): judge vs "
            f"people kappa {shown}; "
            + ("the judge's guardrail may now act" if self.trusted else trust.get("why", ""))
        )

    def finished(self, narrator: Narrator, pages: list[dict[str, Any]]) -> bool:
        stopped = {"paused", "rolled_back"}
        return self.told_end and any(p.get("event") in stopped for p in pages)


class QualitySplit(Quality):
    """The same candidate on a plan with no shadow and no judge: the A/B split first, where
    the application's task_completed rolls it back."""

    plan = "demo-quality-split"
    shadow = False
