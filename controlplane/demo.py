"""`make demo`: one plan through shadow, an A/B split and a rollout, with real model calls, and a
candidate that regresses half-way.

What runs: the provider simulator (``python -m migrations_app.simulator``, its own free port;
OpenAI's and Anthropic's wire formats), Turnout as ``make run`` starts it (web, stream,
worker, beat; the engine evaluates every 5 s here), and, in this process, a webhook receiver
that prints each page and an application sending ~20 requests a second through
``client.complete()``: the SDK routes each request, calls the arm through the provider
adapters (the real ``openai`` and ``anthropic`` SDKs, pointed at the simulator), reports the
outcome and, in shadow, hands the request and control's answer to Turnout's workers, which call
the candidate and compare the answers. Answers are streamed (the time to first token is
measured). One user in five rates the answer (thumbs up is likelier for a fast answer than for
a slow one or an error).

The plan ``demo-chat`` migrates support chat from GPT-4o to Claude Haiku 3.5 (cheaper, a little
faster), on provider connections ``sim-openai`` and ``sim-anthropic`` that point at the
simulator (the catalog's own ``openai`` and ``anthropic`` connections are left alone); the
API key variables they name are set to dummy values for the stack and the application.

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
every 2 s, and exits 0 once the rollback's page has arrived (1 if it has not within
``--patience`` seconds). The stack's own output goes to ``<TURNOUT_DATA_DIR>/demo-stack.log``
(``var/`` by default).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PLAN = "demo-chat"
CONTROL = ("openai", "gpt-4o-2024-08-06")
CANDIDATE = ("anthropic", "claude-3-5-haiku-20241022")
# Catalog provider -> the demo's connection to the simulator: (name, kind, base URL suffix,
# API key variable). OpenAI's SDK wants the ``/v1`` root, Anthropic's the bare one.
CONNECTIONS = {
    "openai": ("sim-openai", "openai", "/v1", "OPENAI_API_KEY"),
    "anthropic": ("sim-anthropic", "anthropic", "", "ANTHROPIC_API_KEY"),
}
DUMMY_KEYS = {"OPENAI_API_KEY": "sk-demo-simulator", "ANTHROPIC_API_KEY": "sk-ant-demo-simulator"}


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
SYSTEM_PROMPT = "You are Acme's support assistant. Answer briefly and politely."
QUESTIONS = [
    "How do I reset my password?",
    "My order {n} has not arrived yet. Where is it?",
    "Can I change the delivery address of order {n}?",
    "What is your refund policy for opened items?",
    "The app crashes when I open the settings page.",
    "How do I cancel my subscription?",
    "I was charged twice for order {n}.",
    "Do you ship to Canada?",
    "Please update my email to jane.doe@example.com.",  # masked in stored shadow pairs
    "How long does the warranty last on the X200 blender?",
    "Can I pay with a gift card and a credit card together?",
    "The discount code SPRING10 does not work.",
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
# that cannot advance (its minimum sample is out of reach): shadow -> split -> rollback.
FAST_TIMINGS = Timings(
    shadow_minutes=0, shadow_samples=60, split_minutes=0, split_samples=1_000_000,
    rollout_minutes=0, rollout_samples=1_000_000, regress_in="ab_split", regress_after=3.0,
    filtered=0.012, evaluation_interval=2.0, rate=20.0,
)  # fmt: skip


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Pages(BaseHTTPRequestHandler):
    """The demo's on-call: prints each page the webhook channel delivers."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        alert = json.loads(body).get("alert", {})
        Pages.received.append(alert)
        guardrail = alert.get("guardrail") or {}
        say(
            f"PAGE {alert.get('severity', '').upper()}: {alert.get('plan_key')} {alert.get('event')}"
            f" ({alert.get('action_taken')})"
        )
        if guardrail:
            say(f"     {guardrail.get('summary')}")
        kinds = alert.get("error_kinds", {})
        say(f"     errors: control {kinds.get('control')}, candidate {kinds.get('candidate')}")
        if alert.get("dashboard_url"):
            say(f"     {alert['dashboard_url']}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


# --- processes -----------------------------------------------------------------------------


def start_simulator(
    env: dict[str, str], timings: Timings
) -> tuple[subprocess.Popen[str], str, Path]:
    """The provider simulator on a port the OS picks; returns it, its URL and its profiles."""
    path = Path(tempfile.mkstemp(prefix="turnout-demo-profiles-", suffix=".json")[1])
    path.write_text(json.dumps(sim_profiles(timings.filtered)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrations_app.simulator", "--port", "0", "--seed", "7",
         "--profiles", str(path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "provider simulator listening on http://127.0.0.1:PORT"
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"the provider simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1].strip(), path


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of a previous run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def follow_stack(stream: IO[str], log: IO[str]) -> None:
    """Copy the stack's output to its log file; echo what a newcomer needs from it."""
    for line in stream:
        log.write(line)
        log.flush()
        if line.startswith(("Admin login", "database:", "broker:")) or "exited with" in line:
            say(f"stack: {line.rstrip()}")


# --- the plan ------------------------------------------------------------------------------


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


def setup_plan(hook_url: str, sim_url: str, timings: Timings) -> str:
    """A fresh ``demo-chat`` plan on the simulator's connections, started; returns an SDK key."""
    from django.contrib.auth import get_user_model

    from migrations_app import plans
    from migrations_app.apikeys import apikey_create
    from migrations_app.models import AlertChannel, MigrationPlan

    user = get_user_model().objects.get(username=os.environ.get("TURNOUT_ADMIN_USER", "admin"))
    actor = plans.Actor.for_user(user)
    MigrationPlan.objects.filter(key=PLAN).delete()  # a fresh demo each time
    os.environ["TURNOUT_DEMO_HOOK_URL"] = hook_url
    os.environ.setdefault("TURNOUT_DEMO_HOOK_SECRET", "demo-secret")
    channel, _ = AlertChannel.objects.update_or_create(
        name="demo webhook",
        defaults={"kind": "webhook", "url_env": "TURNOUT_DEMO_HOOK_URL",
                  "secret_env": "TURNOUT_DEMO_HOOK_SECRET"},
    )  # fmt: skip
    params = {"temperature": 0.2, "max_tokens": 512}
    plan = plans.plan_create(
        key=PLAN,
        name="Demo: support chat, GPT-4o to Claude Haiku 3.5",
        description="make demo: shadow, A/B split and rollout against the provider simulator.",
        control={"model": sim_model(*CONTROL, sim_url), "params": params},
        candidate={"model": sim_model(*CANDIDATE, sim_url), "params": params},
        phases=timings.phases(),
        guardrails=GUARDRAILS,
        owner=user,
        actor=actor,
    )
    plan.alert_channels.add(channel)
    plans.plan_start(plan_key=PLAN, actor=actor, reason="make demo")
    return apikey_create(name="demo", scopes=["decide", "report"])[1]


# --- the application -----------------------------------------------------------------------


class Traffic:
    """The application: ``rate`` requests a second through ``client.complete()``, each on a
    pool thread (a call blocks for the model's latency), and users' thumbs."""

    def __init__(self, client: Any, rate: float, stop: threading.Event) -> None:
        self.client = client
        self.rate = rate
        self.stop = stop
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.in_flight = 0
        self.workers = 64

    def run(self) -> None:
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="app")
        rng = random.Random(7)
        period = 1.0 / self.rate
        # One request first, alone: the first call builds the arm's adapter (importing the
        # vendor SDK takes seconds on a busy machine) while every other thread would wait.
        with self.lock:
            self.in_flight += 1
        self.one(rng.randrange(5000), rng.choice(QUESTIONS), rng.random())
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                with self.lock:
                    saturated = self.in_flight >= self.workers
                    if not saturated:
                        self.in_flight += 1
                if saturated:
                    self.count("skipped")  # the app is out of threads: shed, do not queue
                else:
                    pool.submit(self.one, rng.randrange(5000), rng.choice(QUESTIONS), rng.random())
                next_at += period
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def count(self, *keys: str) -> None:
        with self.lock:
            self.counts.update(keys)

    def one(self, user: int, question: str, draw: float) -> None:
        try:
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question.format(n=40_000 + user)},
            ]
            done = self.client.complete(
                PLAN, f"user-{user}", messages=messages, params={"max_tokens": 300},
                stream=True, timeout=10.0,
            )  # fmt: skip
            latency = sum(r.latency_ms for r in done.results)
            keys = [f"routed:{done.decision.arm}"]
            if done.fell_back:
                keys.append("fell_back")
            if done.error:
                keys.append("error")
            if done.decision.shadow:
                keys.append("shadowed")
            self.count(*keys)
            with self.lock:
                self.latencies.append(latency)
            # One user in five rates the answer; fast answers please more than slow ones.
            if draw < 0.2:
                liked = 0.1 if done.error else (0.85 if latency < 1500 else 0.5)
                self.client.feedback(done.decision_id, 1 if random.random() < liked else -1)
        finally:
            with self.lock:
                self.in_flight -= 1

    def take(self) -> tuple[Counter[str], list[float]]:
        with self.lock:
            counts, latencies = self.counts, self.latencies
            self.counts, self.latencies = Counter(), []
        return counts, latencies


# --- watching the plan ---------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


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


class Story:
    """Prints what happens to the plan; regresses the candidate ``regress_after`` seconds
    into the stage ``regress_in``."""

    def __init__(self, sim_url: str, timings: Timings, traffic: Traffic) -> None:
        self.sim_url = sim_url
        self.timings = timings
        self.traffic = traffic
        self.last_where = ""
        self.last_event = 0
        self.last_evaluation = 0
        self.regress_stage_since: float | None = None
        self.regressed_at: float | None = None
        self.rolled_back_at: float | None = None
        self.next_traffic_line = time.monotonic() + 10
        self.next_shadow_line = time.monotonic() + 10
        self.next_evaluation_line = time.monotonic() + 15

    def step(self) -> None:
        from migrations_app.models import AuditEvent, Evaluation, MigrationPlan

        now = time.monotonic()
        plan = MigrationPlan.objects.select_related("current_stage", "current_run").get(key=PLAN)
        for event in AuditEvent.objects.filter(plan=plan, pk__gt=self.last_event).order_by("pk"):
            self.last_event = event.pk
            if event.action in ("create", "start"):
                continue
            say(f"{event.actor_label}: {event.reason or event.action.replace('_', ' ')}")
        here = where(plan)
        if here != self.last_where:
            self.last_where = here
            say(f"plan {PLAN}: {here}")
            if (
                plan.current_stage is not None
                and plan.current_stage.kind == self.timings.regress_in
            ):
                self.regress_stage_since = self.regress_stage_since or now
            if plan.status == "rolled_back":
                self.rolled_back_at = now
                if self.regressed_at is not None:
                    say(f"rolled back {now - self.regressed_at:.0f} s after the regression")
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
            counts, latencies = self.traffic.take()
            say(
                f"app: {sum(v for k, v in counts.items() if k.startswith('routed:'))} requests "
                f"in 10 s: {counts['routed:control']} routed to control, "
                f"{counts['routed:candidate']} to the candidate ({counts['fell_back']} fell "
                f"back to control), {counts['shadowed']} shadowed, {counts['error']} failed; "
                f"p50 {_pct(latencies, 0.5):.0f} ms, p95 {_pct(latencies, 0.95):.0f} ms"
                + (f"; {counts['skipped']} shed" if counts["skipped"] else "")
            )
        if (
            self.regressed_at is None
            and self.regress_stage_since is not None
            and plan.status == "running"
            and now - self.regress_stage_since >= self.timings.regress_after
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


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does, children included


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parent = os.getppid()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--fast", action="store_true",
        help="short timings, exit once the rollback's page has arrived (the test's mode)",
    )  # fmt: skip
    parser.add_argument("--rate", type=float, default=None, help="requests a second")
    parser.add_argument(
        "--regress-after", type=float, default=None,
        help="seconds into the first rollout step (with --fast: into the split)",
    )  # fmt: skip
    parser.add_argument(
        "--patience", type=float, default=600.0,
        help="with --fast: give up (exit 1) when the rollback's page has not arrived by then",
    )  # fmt: skip
    args = parser.parse_args()
    timings = FAST_TIMINGS if args.fast else DEFAULT_TIMINGS
    if args.rate:
        timings = replace(timings, rate=args.rate)
    if args.regress_after is not None:
        timings = replace(timings, regress_after=args.regress_after)
    env = {**os.environ}
    env.setdefault("DEBUG", "1")
    env.setdefault("TURNOUT_EVALUATION_INTERVAL", str(timings.evaluation_interval))
    # Shadow tasks and the engine's evaluations share the worker's queue, and an evaluation
    # expires after one interval: it must not wait behind shadow tasks that wait on model
    # calls. Threads, not two processes, and none reserving work ahead of a free thread.
    env.setdefault("CELERY_WORKER_POOL", "threads")
    env.setdefault("CELERY_WORKER_CONCURRENCY", "8")
    env.setdefault("CELERY_WORKER_PREFETCH_MULTIPLIER", "1")
    env.setdefault("LOG_LEVEL", "WARNING")  # not a line per model call in the stack's log
    env.update(DUMMY_KEYS)  # never a real key: every call goes to the simulator
    port = int(env.get("TURNOUT_PORT", "8000"))
    stream_port = int(env.get("TURNOUT_STREAM_PORT", str(port + 1)))
    for p in (port, stream_port):
        if not port_free(p):
            say(f"port {p} is in use: set TURNOUT_PORT (and TURNOUT_STREAM_PORT) to free ports")
            return 1
    base, stream = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stream_port}"
    env.setdefault("SITE_URL", base)
    data = Path(env.get("TURNOUT_DATA_DIR", ROOT / "var"))
    data.mkdir(parents=True, exist_ok=True)
    pages = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{pages.server_address[1]}/hook"
    env["TURNOUT_DEMO_HOOK_URL"] = hook_url
    env.setdefault("TURNOUT_DEMO_HOOK_SECRET", "demo-secret")
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or k in DUMMY_KEYS})
    stop = threading.Event()
    simulator: subprocess.Popen[str] | None = None
    profiles: Path | None = None
    stack: subprocess.Popen[str] | None = None
    log: IO[str] | None = None
    client = None
    app: threading.Thread | None = None
    try:
        simulator, sim_url, profiles = start_simulator(env, timings)
        say(f"provider simulator at {sim_url} (profiles: {profiles})")
        log = open(data / "demo-stack.log", "a")  # closed in the finally below
        stack = subprocess.Popen(
            [sys.executable, "-m", "controlplane.launcher"], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        assert stack.stdout is not None
        threading.Thread(target=follow_stack, args=(stack.stdout, log), daemon=True).start()
        say(f"starting Turnout (web {base}, stream {stream}); its output goes to {log.name}")
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or stack.poll() is not None:
                say(f"the control plane did not come up: see {log.name}")
                return 1
            time.sleep(0.5)
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
        import logging

        import django

        django.setup()
        for name in ("httpx", "httpx2"):  # one line per request otherwise
            logging.getLogger(name).setLevel(logging.WARNING)
        import turnout

        key = setup_plan(hook_url, sim_url, timings)
        say(f"plan {PLAN} is running: open {base}/plans/{PLAN}/ (or {base}/admin/)")
        # Every flush posts one batch of shadow samples, which becomes one worker task that
        # calls the candidate for all of them at once: fewer, fuller tasks keep the worker
        # ahead of the traffic (a task every 0.5 s fell behind at 20 requests a second).
        client = turnout.Client(base, key, stream_url=stream, flush_interval=2.0, start_wait=10)
        for _ in range(100):  # the snapshot arrives within a second; ten at most
            if PLAN in client.snapshot.plans:
                break
            time.sleep(0.1)
        else:
            say("the SDK never received the plan's snapshot")
            return 1
        traffic = Traffic(client, timings.rate, stop)
        app = threading.Thread(target=traffic.run, daemon=True)
        app.start()
        say(f"the app sends {timings.rate:g} requests a second through client.complete()")
        story = Story(sim_url, timings, traffic)
        give_up = time.monotonic() + args.patience
        try:
            while not stop.wait(1.0):
                if os.getppid() != parent:
                    # `timeout ... make demo` stops make, which passes nothing on to us.
                    say("the demo's parent process has gone: stopping")
                    return 0
                if stack.poll() is not None:
                    say(f"the stack stopped (exit {stack.returncode}): see {log.name}")
                    return 1
                story.step()
                if args.fast:
                    paged = any(p.get("event") == "rolled_back" for p in Pages.received)
                    if story.rolled_back_at is not None and paged:
                        say("fast demo done: the engine rolled the plan back and the page arrived")
                        return 0
                    if time.monotonic() > give_up:
                        say(
                            f"fast demo gave up after {args.patience:g} s: plan is {story.last_where}"
                        )
                        return 1
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        stop.set()
        if app is not None:
            app.join(timeout=15)  # the requests in flight finish before the client closes
        if client is not None:
            client.close(timeout=2)
        if stack is not None:
            stack.terminate()  # the launcher stops web, stream, worker and beat in order
            try:
                stack.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
        if simulator is not None:
            simulator.terminate()
            simulator.wait(timeout=10)
        if profiles is not None:
            profiles.unlink(missing_ok=True)
        pages.shutdown()
        if log is not None:
            log.close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # during start-up; everything started is stopped by then
        sys.exit(130)
