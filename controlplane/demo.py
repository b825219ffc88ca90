"""`make demo`: the control plane, a plan, live traffic, and a candidate that regresses.

Starts Turnout as `make run` does (web, stream, worker, beat; the engine evaluates every 5 s
here), creates the plan ``demo-chat`` (GPT-4o to GPT-4o mini: A/B split 50 % for a minute, then a
rollout to 75 and 100 %, two minutes each; 500 requests per arm per step) with a webhook alert
channel that this process receives and prints, and sends ~25 requests a second through the
SDK (decide, then report how the call went). After ``--regress-after`` seconds the
candidate starts failing far more often (2 % to 15 %) and answering slower: watch the engine roll
the plan back on its own, every SDK switch to control, and the page arrive, with the
evidence, in the admin's audit trail and the plan's dashboard.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN = "demo-chat"
PHASES = [
    {"kind": "ab_split", "percent": 50.0, "steps": [], "min_duration_minutes": 1,
     "min_samples": 500},
    {"kind": "rollout", "percent": None, "steps": [75, 100], "min_duration_minutes": 2,
     "min_samples": 500},
]  # fmt: skip
# Tolerances a demo can prove inside within a minute of traffic (absolute error rate and
# satisfaction), so the plan visibly advances before the candidate regresses.
GUARDRAILS = [
    {"metric": "error_rate", "tolerance_kind": "absolute", "tolerance": 0.03, "action": "rollback"},
    {"metric": "latency_p95", "tolerance_kind": "relative", "tolerance": 1.5, "action": "rollback"},
    {"metric": "satisfaction", "tolerance_kind": "absolute", "tolerance": 0.15, "action": "alert"},
    {
        "metric": "cost_per_request",
        "tolerance_kind": "relative",
        "tolerance": 1.2,
        "action": "alert",
    },
]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Pages(BaseHTTPRequestHandler):
    """The demo's on-call: prints each page the webhook channel delivers."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        alert = json.loads(body).get("alert", {})
        guardrail = alert.get("guardrail") or {}
        say(
            f"PAGE {alert.get('severity', '').upper()}: {alert.get('plan_key')} {alert.get('event')}"
        )
        if guardrail:
            say(f"     {guardrail.get('summary')}")
        kinds = alert.get("error_kinds", {})
        say(f"     errors: control {kinds.get('control')}, candidate {kinds.get('candidate')}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def setup_plan(hook_url: str) -> str:
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
    plan = plans.plan_create(
        key=PLAN,
        name="Demo: support chat, GPT-4o to GPT-4o mini",
        control={"model": "openai:gpt-4o-2024-08-06", "params": {"temperature": 0.2}},
        candidate={"model": "openai:gpt-4o-mini-2024-07-18", "params": {"temperature": 0.2}},
        phases=PHASES,
        guardrails=GUARDRAILS,
        actor=actor,
    )
    plan.alert_channels.add(channel)
    plans.plan_start(plan_key=PLAN, actor=actor, reason="make demo")
    return apikey_create(name="demo", scopes=["decide", "report"])[1]


def traffic(base: str, stream: str, key: str, regress_after: float, stop: threading.Event) -> None:
    import numpy as np
    import turnout

    client = turnout.Client(base, key, stream_url=stream, flush_interval=0.5)
    rng = np.random.default_rng(7)
    started = time.time()
    regressed = False
    last_arm_line = 0.0
    counts = {"control": 0, "candidate": 0}
    try:
        while not stop.is_set():
            now = time.time()
            if not regressed and now - started >= regress_after:
                regressed = True
                say("the candidate regresses now: 15 % errors instead of 2 %, 1.5x the latency")
            d = client.decide(PLAN, unit=f"user-{rng.integers(0, 5000)}")
            bad = regressed and d.arm == "candidate"
            counts[d.arm] += 1
            client.report(
                d,
                latency_ms=float(900 * np.exp(rng.normal(0, 0.4)) * (1.5 if bad else 1.0)),
                ttft_ms=float(220 * np.exp(rng.normal(0, 0.3))),
                error="server_error" if rng.random() < (0.15 if bad else 0.02) else None,
                input_tokens=int(rng.integers(400, 1600)),
                output_tokens=int(rng.integers(80, 500)),
            )
            if rng.random() < 0.15:
                client.feedback(d, 1 if rng.random() < (0.6 if bad else 0.8) else -1)
            if now - last_arm_line >= 10:
                plan = client.snapshot.plans.get(PLAN)
                if plan is not None:
                    say(
                        f"traffic: {plan.status}, candidate weight {plan.weight_bp / 100:g} %; "
                        f"last 10 s: {counts['control']} control, {counts['candidate']} candidate"
                    )
                counts = {"control": 0, "candidate": 0}
                last_arm_line = now
            time.sleep(0.02)
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regress-after", type=float, default=120.0, help="seconds")
    args = parser.parse_args()
    env = {**os.environ}
    env.setdefault("DEBUG", "1")
    env.setdefault("TURNOUT_EVALUATION_INTERVAL", "5")
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    port = int(env.get("TURNOUT_PORT", "8000"))
    base, stream = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
    pages = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{pages.server_address[1]}/hook"
    env["TURNOUT_DEMO_HOOK_URL"] = hook_url
    env.setdefault("TURNOUT_DEMO_HOOK_SECRET", "demo-secret")
    stack = subprocess.Popen(
        [sys.executable, "-m", "controlplane.launcher"], cwd=ROOT, env=env, start_new_session=True
    )
    stop = threading.Event()
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or stack.poll() is not None:
                say("the control plane did not come up")
                return 1
            time.sleep(0.5)
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
        import logging

        import django

        django.setup()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per SDK request
        key = setup_plan(hook_url)
        say(f"plan {PLAN} is running: open {base}/plans/{PLAN}/ (or {base}/admin/)")
        threading.Thread(
            target=traffic, args=(base, stream, key, args.regress_after, stop), daemon=True
        ).start()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        stop.set()
        time.sleep(1.0)
        os.killpg(stack.pid, signal.SIGTERM)
        stack.wait(timeout=30)
        pages.shutdown()


if __name__ == "__main__":
    sys.exit(main())
