"""`make demo`: a plan through its phases with real model calls, and a story of what happens.

What runs: the provider simulator (``python -m migrations_app.simulator``, its own free port;
OpenAI's and Anthropic's wire formats), Turnout as ``make run`` starts it (web, stream,
worker, beat; the engine evaluates every few seconds here), and, in this process, a webhook
receiver that prints each page and an application sending ~20 requests a second through
``client.complete()``: the SDK routes each request, calls the arm through the provider
adapters (the real ``openai`` and ``anthropic`` SDKs, pointed at the simulator), reports the
outcome and, in shadow, hands the request and control's answer to Turnout's workers, which call
the candidate and compare the answers. The API key variables the plan's connections name are
set to dummy values for the stack and the application: every call goes to the simulator.

The package, one file per part:

- ``run.py``: the command (``python -m controlplane.demo``): starts everything, narrates, stops.
- ``stack.py``: the processes (the simulator, the control plane) and how they stop.
- ``receiver.py``: the on-call: the webhook receiver that prints each page.
- ``traffic.py``: the application: requests through ``client.complete()`` and users' thumbs.
- ``story.py``: what a story is, and the narrator that prints what happens to its plan.
- ``stories/``: one module per story (``regression.py``: the candidate regresses half-way and
  the engine rolls it back). A second story is a new module there, named in
  ``stories.STORIES``.

``--fast`` (tests/test_demo*.py) runs a story's short timings and exits 0 once the story's end
has come (1 if it has not within ``--patience`` seconds). The stack's own output goes to
``<TURNOUT_DATA_DIR>/demo-stack.log`` (``var/`` by default).
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def say(text: str) -> None:
    """A line of the demo's narration, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
