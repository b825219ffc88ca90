"""What a demo story is, and the narrator every story shares.

A story (one module in ``stories/``) names its plan, says how the simulated models behave,
creates and starts the plan, makes its events happen (a regression, a worse answer...) and
says when a ``--fast`` run has seen enough. The narrator prints what happens to the plan, the
same for every story: the audit trail, where the plan is, the shadow's pairs, the engine's
word and the application's traffic.
"""

from __future__ import annotations

import abc
import os
import time
from dataclasses import replace
from typing import Any

from controlplane.demo import say
from controlplane.demo.traffic import Traffic

# Catalog provider -> the demo's connection to the simulator: (name, kind, base URL suffix,
# API key variable). OpenAI's SDK wants the ``/v1`` root, Anthropic's the bare one. The
# catalog's own ``openai`` and ``anthropic`` connections are left alone.
CONNECTIONS = {
    "openai": ("sim-openai", "openai", "/v1", "OPENAI_API_KEY"),
    "anthropic": ("sim-anthropic", "anthropic", "", "ANTHROPIC_API_KEY"),
}
DUMMY_KEYS = {"OPENAI_API_KEY": "sk-demo-simulator", "ANTHROPIC_API_KEY": "sk-ant-demo-simulator"}


class Story(abc.ABC):
    """One story: its plan, its simulated models, its events. Made once per run, with the
    command's options (``fast``: the test's short timings; ``rate``: requests a second;
    ``event_after``: seconds into the stage where the story's event happens)."""

    plan: str  # the plan's key
    done_line: str  # said when a --fast run has seen the story's end
    # The story's timings, a frozen dataclass with at least ``rate`` (requests a second the
    # application sends) and ``evaluation_interval`` (seconds between the engine's
    # evaluations): the demo's, and the test's short ones (``--fast``).
    default_timings: Any
    fast_timings: Any
    event_field: str  # the timings' field ``event_after`` sets

    def __init__(
        self, *, fast: bool, rate: float | None = None, event_after: float | None = None
    ) -> None:
        """Choose the timings (``fast`` or not), then apply the options given."""
        timings = self.fast_timings if fast else self.default_timings
        if rate:
            timings = replace(timings, rate=rate)
        if event_after is not None:
            timings = replace(timings, **{self.event_field: event_after})
        self.timings = timings
        self.rate: float = timings.rate
        self.evaluation_interval: float = timings.evaluation_interval

    @abc.abstractmethod
    def profiles(self) -> dict[str, dict[str, Any]]:
        """The simulator's profiles at start (``migrations_app.simulator``)."""

    @abc.abstractmethod
    def setup(self, *, hook_url: str, sim_url: str) -> str:
        """Create and start the plan (Django is set up); returns an SDK key for the app."""

    @abc.abstractmethod
    def step(self, plan: Any, narrator: Narrator, now: float) -> None:
        """Make the story's events happen; called every second, after the narrator's step."""

    @abc.abstractmethod
    def finished(self, narrator: Narrator, pages: list[dict[str, Any]]) -> bool:
        """With ``--fast``: whether the run has seen what the story shows (exit 0)."""

    def traffic(self, client: Any, stop: Any) -> Traffic:
        """The application; a story whose users do something else makes its own."""
        return Traffic(client, self.plan, self.rate, stop)


class Narrator:
    """Prints what happens to ``plan``, and remembers since when it is where it is."""

    def __init__(self, plan: str, traffic: Traffic) -> None:
        self.plan = plan
        self.traffic = traffic
        self.last_where = ""
        self.last_event = 0
        self.last_evaluation = 0
        self.stage_seen: dict[str, float] = {}  # stage kind -> when first seen (monotonic)
        self.rolled_back_at: float | None = None
        self.next_traffic_line = time.monotonic() + 10
        self.next_shadow_line = time.monotonic() + 10
        self.next_evaluation_line = time.monotonic() + 15

    def load(self) -> Any:
        from migrations_app.models import MigrationPlan

        return MigrationPlan.objects.select_related("current_stage", "current_run").get(
            key=self.plan
        )

    def step(self, plan: Any, now: float) -> None:
        from migrations_app.models import AuditEvent, Evaluation

        for event in AuditEvent.objects.filter(plan=plan, pk__gt=self.last_event).order_by("pk"):
            self.last_event = event.pk
            if event.action in ("create", "start"):
                continue
            say(f"{event.actor_label}: {event.reason or event.action.replace('_', ' ')}")
        here = where(plan)
        if here != self.last_where:
            self.last_where = here
            say(f"plan {self.plan}: {here}")
            if plan.current_stage is not None:
                self.stage_seen.setdefault(plan.current_stage.kind, now)
            if plan.status == "rolled_back":
                self.rolled_back_at = now
        stage = plan.current_stage if plan.status == "running" else None
        if stage is not None and stage.kind == "shadow" and now >= self.next_shadow_line:
            self.next_shadow_line = now + 10
            say(shadow_line(plan))
        if stage is not None and now >= self.next_evaluation_line:
            self.next_evaluation_line = now + 15
            evaluation = Evaluation.objects.filter(plan=plan).order_by("-pk").first()
            if evaluation is not None and evaluation.pk != self.last_evaluation:
                self.last_evaluation = evaluation.pk
                reasons = "; ".join(evaluation.decision.get("reasons", []))
                say(f"engine: {evaluation.action}: {reasons}")
        if now >= self.next_traffic_line:
            self.next_traffic_line = now + 10
            say(self.traffic.summary(10))


def where(plan: Any) -> str:
    stage = plan.current_stage
    if plan.status != "running" or stage is None:
        return str(plan.status).replace("_", " ")
    if stage.kind == "shadow":
        return f"shadow, {stage.shadow_bp / 100:g} % of requests copied to the candidate"
    if stage.kind == "ab_split":
        return f"A/B split, {stage.weight_bp / 100:g} % of users on the candidate"
    return f"rollout, {stage.weight_bp / 100:g} % of users on the candidate"


def shadow_line(plan: Any) -> str:
    from django.db.models import Count

    from migrations_app.models import ShadowAggregate, ShadowSample

    by_status = dict(
        ShadowSample.objects.filter(plan=plan, run=plan.current_run)
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    data: dict[str, Any] = {}
    for row in ShadowAggregate.objects.filter(stage__run=plan.current_run, stage__kind="shadow"):
        for k, v in row.data.items():
            if isinstance(v, int | float):  # counts; "metrics" holds paired sums
                data[k] = data.get(k, 0) + v

    def mean(name: str) -> str:
        n = data.get(f"{name}_n", 0)
        return f"{data[f'{name}_sum'] / n:.2f}" if n else "-"

    return (
        f"shadow: {by_status.get('done', 0)} pairs compared, {by_status.get('pending', 0)} "
        f"pending, {by_status.get('running', 0)} running; similarity {mean('similarity')}, "
        f"exact match {mean('exact_match')}; failures: candidate only "
        f"{data.get('candidate_only', 0)}, control only "
        f"{data.get('control_only', 0)}"
    )


# --- what stories build plans from ---------------------------------------------------------


def sim_model(provider: str, model_id: str, sim_url: str) -> Any:
    """The catalog's model on the demo's connection to the simulator (same prices/limits)."""
    from migrations_app.models import ModelSpec, ProviderConnection

    name, kind, suffix, key_env = CONNECTIONS[provider]
    connection, _ = ProviderConnection.objects.update_or_create(
        name=name,
        defaults={"kind": kind, "base_url": sim_url + suffix, "api_key_env": key_env},
    )
    real = ModelSpec.objects.get(provider__name=provider, model_id=model_id)
    spec, _ = ModelSpec.objects.update_or_create(
        provider=connection,
        model_id=model_id,
        defaults={
            "display_name": f"{real.display_name} (simulated)",
            "input_price_per_mtok": real.input_price_per_mtok,
            "output_price_per_mtok": real.output_price_per_mtok,
            "context_window": real.context_window,
            "max_output_tokens": real.max_output_tokens,
        },
    )
    return spec


def webhook_channel(hook_url: str) -> Any:
    """The alert channel that pages the demo's receiver."""
    from migrations_app.models import AlertChannel

    os.environ["DEMO_HOOK_URL"] = hook_url
    os.environ.setdefault("DEMO_HOOK_SECRET", "demo-secret")
    channel, _ = AlertChannel.objects.update_or_create(
        name="demo webhook",
        defaults={"kind": "webhook", "url_env": "DEMO_HOOK_URL",
                  "secret_env": "DEMO_HOOK_SECRET"},
    )  # fmt: skip
    return channel


def demo_actor() -> tuple[Any, Any]:
    """The demo admin (``make run`` made it) and the lifecycle actor for them."""
    from django.contrib.auth import get_user_model

    from migrations_app.plans import lifecycle

    user = get_user_model().objects.get(username=os.environ.get("TURNOUT_ADMIN_USER", "admin"))
    return user, lifecycle.Actor.for_user(user)
