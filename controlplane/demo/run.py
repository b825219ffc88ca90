"""The demo's command, ``python -m controlplane.demo`` (``make demo``): starts the simulator,
the control plane, the receiver and the application, tells the story, and stops everything
within a deadline (Ctrl-C, SIGTERM, or the parent gone). See controlplane/demo/__init__.py."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from controlplane.demo import ROOT, say
from controlplane.demo.receiver import Pages, start_receiver
from controlplane.demo.stack import (
    port_free,
    start_simulator,
    start_stack,
    stop_together,
    wait_healthy,
)
from controlplane.demo.stories import DEFAULT_STORY, STORIES
from controlplane.demo.story import DUMMY_KEYS, Narrator


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does, children included


def _parser() -> argparse.ArgumentParser:
    description = (sys.modules["controlplane.demo"].__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m controlplane.demo", description=description)
    parser.add_argument(
        "--story", choices=sorted(STORIES), default=DEFAULT_STORY,
        help=f"which story to tell (default: {DEFAULT_STORY})",
    )  # fmt: skip
    parser.add_argument(
        "--fast", action="store_true",
        help="short timings, exit once the story's end has come (the test's mode)",
    )  # fmt: skip
    parser.add_argument("--rate", type=float, default=None, help="requests a second")
    parser.add_argument(
        "--regress-after", type=float, default=None,
        help="seconds into the stage where the story's event happens (regression: the "
        "first rollout step, with --fast the split; quality: the shadow, when the engineer "
        "starts labelling pairs)",
    )  # fmt: skip
    parser.add_argument(
        "--patience", type=float, default=600.0,
        help="with --fast: give up (exit 1) when the story's end has not come by then",
    )  # fmt: skip
    return parser


#: The demo's whole stop, from Ctrl-C or SIGTERM: the app's requests in flight (at most
#: APP_DRAIN_SECONDS), the SDK's last flush (1 s), then the stack and the simulator together
#: (the launcher's own deadline is STACK_STOP_SECONDS); whatever is left at the end is killed.
STOP_SECONDS = 10.0
APP_DRAIN_SECONDS = 2.0
STACK_STOP_SECONDS = 5


def _stack_env(evaluation_interval: float) -> dict[str, str]:
    """The environment of the stack and the simulator: this one's, with the demo's defaults."""
    env = {**os.environ}
    env.setdefault("DEBUG", "1")
    env.setdefault("TURNOUT_EVALUATION_INTERVAL", str(evaluation_interval))
    # Shadow tasks and the engine's evaluations share the worker's queue, and an evaluation
    # expires after one interval: it must not wait behind shadow tasks that wait on model
    # calls. Threads, not two processes, and none reserving work ahead of a free thread.
    env.setdefault("CELERY_WORKER_POOL", "threads")
    env.setdefault("CELERY_WORKER_CONCURRENCY", "8")
    env.setdefault("CELERY_WORKER_PREFETCH_MULTIPLIER", "1")
    env.setdefault("LOG_LEVEL", "WARNING")  # not a line per model call in the stack's log
    # The launcher's own stop deadline: within the demo's (STOP_SECONDS), after the app's.
    env.setdefault("TURNOUT_STOP_TIMEOUT", str(STACK_STOP_SECONDS))
    env.update(DUMMY_KEYS)  # never a real key: every call goes to the simulator
    return env


def _setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import logging

    import django

    django.setup()
    for name in ("httpx", "httpx2"):  # one line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parent = os.getppid()
    args = _parser().parse_args()
    story = STORIES[args.story](fast=args.fast, rate=args.rate, event_after=args.regress_after)
    env = _stack_env(story.evaluation_interval)
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
    pages, hook_url = start_receiver()
    env["DEMO_HOOK_URL"] = hook_url
    env.setdefault("DEMO_HOOK_SECRET", "demo-secret")
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or k in DUMMY_KEYS})
    stop = threading.Event()
    simulator: subprocess.Popen[str] | None = None
    profiles: Path | None = None
    stack: subprocess.Popen[str] | None = None
    log: IO[str] | None = None
    client = None
    app: threading.Thread | None = None
    try:
        simulator, sim_url, profiles = start_simulator(env, story.profiles())
        say(f"provider simulator at {sim_url} (profiles: {profiles})")
        log = open(data / "demo-stack.log", "a")  # closed in the finally below
        stack = start_stack(env, log)
        say(f"starting Turnout (web {base}, stream {stream}); its output goes to {log.name}")
        if not wait_healthy(base, stack, 180):
            say(f"the control plane did not come up: see {log.name}")
            return 1
        _setup_django()
        import turnout

        key = story.setup(hook_url=hook_url, sim_url=sim_url)
        say(f"plan {story.plan} is running: open {base}/plans/{story.plan}/ (or {base}/admin/)")
        # Every flush posts one batch of shadow samples, which becomes one worker task that
        # calls the candidate for all of them at once: fewer, fuller tasks keep the worker
        # ahead of the traffic (a task every 0.5 s fell behind at 20 requests a second).
        client = turnout.Client(base, key, stream_url=stream, flush_interval=2.0, start_wait=10)
        for _ in range(100):  # the snapshot arrives within a second; ten at most
            if story.plan in client.snapshot.plans:
                break
            time.sleep(0.1)
        else:
            say("the SDK never received the plan's snapshot")
            return 1
        traffic = story.traffic(client, stop)
        app = threading.Thread(target=traffic.run, daemon=True)
        app.start()
        say(f"the app sends {story.rate:g} requests a second through client.complete()")
        narrator = Narrator(story.plan, traffic)
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
                plan, now = narrator.load(), time.monotonic()
                narrator.step(plan, now)
                story.step(plan, narrator, now)
                if args.fast:
                    if story.finished(narrator, Pages.received):
                        say(f"fast demo done: {story.done_line}")
                        return 0
                    if time.monotonic() > give_up:
                        say(
                            f"fast demo gave up after {args.patience:g} s: plan is "
                            f"{narrator.last_where}"
                        )
                        return 1
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        # Everything stops within STOP_SECONDS of here, as make run does.
        deadline = time.monotonic() + STOP_SECONDS
        stop.set()
        if app is not None:
            app.join(timeout=APP_DRAIN_SECONDS)  # requests in flight finish before the close
        if client is not None:
            client.close(timeout=1)
        # The launcher stops web, stream, worker and beat within its own deadline
        # (TURNOUT_STOP_TIMEOUT, then kills each one's process group); should it hang itself,
        # killing it makes the kernel send them SIGTERM (PR_SET_PDEATHSIG). The simulator
        # stops beside it.
        stop_together([p for p in (stack, simulator) if p is not None], deadline)
        if profiles is not None:
            profiles.unlink(missing_ok=True)
        pages.shutdown()
        if log is not None:
            log.close()
