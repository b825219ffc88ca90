"""The first story (``make demo``): one plan through shadow, an A/B split and a rollout, and a
candidate that regresses half-way; the engine rolls it back on its own.

The plan ``demo-chat`` migrates support chat from GPT-4o to Claude Haiku 3.5 (cheaper, a little
faster), on provider connections ``sim-openai`` and ``sim-anthropic`` that point at the
simulator. One user in five rates the answer.

Timeline with the default timings, in minutes from the plan's start (the stack needs 10 to
45 s to come up before that), as measured on a busy 2-core machine (PostgreSQL and Redis, then
the embedded SQLite and filesystem broker):

- 0:00 shadow: every request is copied to the candidate; users only ever see GPT-4o. The
  dashboard's shadow pairs fill up with the compared answers. The engine advances once a
  minute has passed, 300 pairs are compared and every guardrail is proven inside its
  tolerance (error rate by the paired test, p95 latency, cost per request): 1:02 to 1:05.
- A/B split, 50 % of users on the candidate, for at least a minute and 600 requests per arm
  (when the error rate's confirmatory look is taken); the engine advances when the bounds
  prove every guardrail inside: 2:10 to 2:50.
- rollout, 75 % of users on the candidate (then 100 %, two minutes each).
- 20 s into the rollout the candidate regresses: its simulator profile is changed at run time
  (``PUT /_sim/profiles/claude-3-5-haiku-20241022``): half its calls fail with 529 overloaded
  (after the SDK's three attempts about one request in eight still fails, and the user gets
  GPT-4o's answer through the fallback) and it answers ~2.5x slower.
- 20 to 40 s later the engine rolls the plan back on its own (p95 latency or error rate
  regressed), the change is pushed to the SDK (the next 10 s of traffic are all on control),
  and the page arrives here with the evidence; ~10 s after it, the recovery page. The demo
  keeps running (Ctrl-C stops it) for the dashboard, the timeline and the report.

``--fast`` (tests/test_demo.py) runs the shadow with no minimum duration, regresses the
candidate 3 s into a split that cannot advance (its minimum sample is out of reach), evaluates
every 2 s, sends 40 requests a second, and is done once the rollback's page has arrived.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from controlplane.demo import say
from controlplane.demo.story import Narrator, Story, demo_actor, sim_model, webhook_channel

PLAN = "demo-chat"
CONTROL = ("openai", "gpt-4o-2024-08-06")
CANDIDATE = ("anthropic", "claude-3-5-haiku-20241022")


def sim_profiles(filtered: float) -> dict[str, dict[str, Any]]:
    """How each model behaves in the simulator: transient failures that the SDK's retries
    absorb, and a content filter on a fraction ``filtered`` of answers that they do not
    (non-transient: the user sees it). Without such failures the shadow could not advance
    soon: its paired error test decides on the pairs where exactly one model failed, and
    needs ten of them. The candidate is the faster model (the reason to migrate), which the
    split's p95 latency bound can prove within a minute."""
    return {
        "*": {"latency_median_ms": 300.0, "latency_p95_ms": 700.0},
        CONTROL[1]: {
            "latency_median_ms": 520.0,
            "latency_p95_ms": 1100.0,
            "errors": {"server_error": 0.03, "content_filter": filtered},
        },
        CANDIDATE[1]: {
            "latency_median_ms": 300.0,
            "latency_p95_ms": 620.0,
            "errors": {"overloaded": 0.03, "content_filter": filtered},
        },
    }


def regression(filtered: float) -> dict[str, Any]:
    """The candidate's vendor has an incident: half the calls overloaded (529), the rest
    ~2.5x slower. After the SDK's three attempts about one request in eight still fails."""
    return {
        "latency_median_ms": 750.0,
        "latency_p95_ms": 1800.0,
        "errors": {"overloaded": 0.5, "content_filter": filtered},
    }


# Tolerances a demo can prove inside within a minute of traffic, so the plan visibly advances
# before the candidate regresses. No satisfaction guardrail: in shadow no user sees the
# candidate's answers, so it could never be proven inside and the shadow would never advance
# (the feedback still reaches the dashboard's satisfaction chart).
GUARDRAILS = [
    {"metric": "error_rate", "tolerance_kind": "absolute", "tolerance": 0.03, "action": "rollback"},
    {"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"},
    {
        "metric": "cost_per_request",
        "tolerance_kind": "relative",
        "tolerance": 1.2,
        "action": "alert",
    },
]


@dataclass(frozen=True, slots=True)
class Timings:
    """The plan's phases, when the candidate regresses, and the demo's pace."""

    shadow_minutes: int
    shadow_samples: int
    split_minutes: int
    split_samples: int
    rollout_minutes: int
    rollout_samples: int
    regress_in: str  # the stage kind the regression waits for
    regress_after: float  # seconds into that stage
    filtered: float  # share of answers each model's content filter blocks
    evaluation_interval: float
    rate: float  # requests a second

    def phases(self) -> list[dict[str, Any]]:
        return [
            {"kind": "shadow", "percent": 100.0, "steps": [],
             "min_duration_minutes": self.shadow_minutes, "min_samples": self.shadow_samples},
            {"kind": "ab_split", "percent": 50.0, "steps": [],
             "min_duration_minutes": self.split_minutes, "min_samples": self.split_samples},
            {"kind": "rollout", "percent": None, "steps": [75, 100],
             "min_duration_minutes": self.rollout_minutes, "min_samples": self.rollout_samples},
        ]  # fmt: skip


DEFAULT_TIMINGS = Timings(
    shadow_minutes=1, shadow_samples=300, split_minutes=1, split_samples=600,
    rollout_minutes=2, rollout_samples=400, regress_in="rollout", regress_after=20.0,
    filtered=0.012, evaluation_interval=5.0, rate=20.0,
)  # fmt: skip
# The test's: the same shadow with no minimum duration, then the regression 3 s into a split
# that cannot advance (its minimum sample is out of reach): shadow -> split -> rollback. At 40
# requests a second: what the shadow and the rollback wait for is a sample (the paired error
# test's pairs, the p95 bounds' samples per arm), sent twice as fast as at the demo's 20.
FAST_TIMINGS = Timings(
    shadow_minutes=0, shadow_samples=60, split_minutes=0, split_samples=1_000_000,
    rollout_minutes=0, rollout_samples=1_000_000, regress_in="ab_split", regress_after=3.0,
    filtered=0.012, evaluation_interval=2.0, rate=40.0,
)  # fmt: skip


class Regression(Story):
    """The candidate regresses ``regress_after`` seconds into the stage ``regress_in``."""

    plan = PLAN
    done_line = "the engine rolled the plan back and the page arrived"

    default_timings = DEFAULT_TIMINGS
    fast_timings = FAST_TIMINGS
    event_field = "regress_after"

    def __init__(
        self, *, fast: bool, rate: float | None = None, event_after: float | None = None
    ) -> None:
        super().__init__(fast=fast, rate=rate, event_after=event_after)
        self.sim_url = ""
        self.regressed_at: float | None = None
        self.told_rollback = False

    def profiles(self) -> dict[str, dict[str, Any]]:
        return sim_profiles(self.timings.filtered)

    def setup(self, *, hook_url: str, sim_url: str) -> str:
        """A fresh ``demo-chat`` plan on the simulator's connections, started."""
        from migrations_app.api.keys import apikey_create
        from migrations_app.models import MigrationPlan
        from migrations_app.plans import edits, lifecycle

        self.sim_url = sim_url
        user, actor = demo_actor()
        MigrationPlan.objects.filter(key=PLAN).delete()  # a fresh demo each time
        channel = webhook_channel(hook_url)
        params = {"temperature": 0.2, "max_tokens": 512}
        plan = edits.plan_create(
            key=PLAN,
            name="Demo: support chat, GPT-4o to Claude Haiku 3.5",
            description="make demo: shadow, A/B split and rollout against the provider simulator.",
            control={"model": sim_model(*CONTROL, sim_url), "params": params},
            candidate={"model": sim_model(*CANDIDATE, sim_url), "params": params},
            phases=self.timings.phases(),
            guardrails=GUARDRAILS,
            owner=user,
            actor=actor,
        )
        plan.alert_channels.add(channel)
        lifecycle.plan_start(plan_key=PLAN, actor=actor, reason="make demo")
        return apikey_create(name="demo", scopes=["decide", "report"])[1]

    def step(self, plan: Any, narrator: Narrator, now: float) -> None:
        if (
            narrator.rolled_back_at is not None
            and self.regressed_at is not None
            and not self.told_rollback
        ):
            self.told_rollback = True
            say(
                f"rolled back {narrator.rolled_back_at - self.regressed_at:.0f} s after the regression"
            )
        since = narrator.stage_seen.get(self.timings.regress_in)
        if (
            self.regressed_at is None
            and since is not None
            and plan.status == "running"
            and now - since >= self.timings.regress_after
        ):
            self.regress()

    def regress(self) -> None:
        import httpx

        changed = httpx.put(
            f"{self.sim_url}/_sim/profiles/{CANDIDATE[1]}",
            json=regression(self.timings.filtered),
            timeout=5,
        )
        changed.raise_for_status()
        self.regressed_at = time.monotonic()
        say(
            f"REGRESSION: the candidate's vendor has an incident (simulator profile of "
            f"{CANDIDATE[1]} changed): half its calls fail with 529 overloaded, answers "
            f"~2.5x slower. Watch the engine roll back on its own."
        )

    def finished(self, narrator: Narrator, pages: list[dict[str, Any]]) -> bool:
        paged = any(p.get("event") == "rolled_back" for p in pages)
        return narrator.rolled_back_at is not None and paged
