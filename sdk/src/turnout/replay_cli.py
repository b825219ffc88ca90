"""``python -m turnout replay <plan> [--dataset NAME] [--wait]``: start a plan's replay phase
and, with ``--wait``, follow it to its verdict (``POST``/``GET /api/v1/plans/{key}/replay``).

Exit status with ``--wait``: 0 the replay passed every gate, 1 it did not (failed, inconclusive,
not evaluated after a provider outage, or cancelled: only a pass lets a pull request through),
or the server refused; 3 the server could not be reached. Without ``--wait``: 0 once started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from turnout.contract import PLANS_PATH

#: How long ``--wait`` follows a replay at most, by default (seconds).
DEFAULT_MAX_WAIT = 3600.0


def render_replay(replay: dict[str, Any] | None) -> str:
    """A replay's status as a few lines: progress, then the gates once decided."""
    if replay is None:
        return "no replay yet"
    p = replay["progress"]
    lines = [
        f"replay {replay['id']} of {replay['dataset']} v{replay['dataset_version']} "
        f"({replay['items']} items x {replay['repeats']}): {replay['status']}"
        f"{' -> ' + replay['decision'] if replay.get('decision') else ''}; "
        f"{p['done']}/{replay['calls_total']} calls done, {p['failed']} not evaluated"
    ]
    for gate in replay.get("gates") or []:
        iv = gate.get("interval") or {}
        shown = (
            f"{iv['estimate']:.4g} [{iv['lower']:.4g}, {iv['upper']:.4g}] over {iv['items']} items"
            if iv
            else "not measured"
        )
        lines.append(f"  {gate['outcome']:>13}  {gate['gate']}: {shown}")
    if replay.get("cost_usd") is not None:
        lines.append(f"  cost ${replay['cost_usd']:.4f}, {replay['seconds']:.1f} s")
    return "\n".join(lines)


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = {"code": "bad_response", "message": response.text[:200]}
    return data if isinstance(data, dict) else {}


def replay_command(
    http: httpx.Client,
    plan: str,
    *,
    dataset: str | None,
    version: int | None,
    wait: bool,
    poll: float,
    max_wait: float,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    path = f"{PLANS_PATH}/{plan}/replay"
    body: dict[str, Any] = {"reason": "replay from the command line"}
    if dataset is not None:
        body["dataset"] = dataset
        if version is not None:
            body["version"] = version
    try:
        response = http.post(path, json=body)
        data = _answer(response)
        if response.status_code >= 400:
            print(
                f"error {response.status_code} {data.get('code')}: {data.get('message')}", file=err
            )
            return 1
        shown = ""
        deadline = clock() + max_wait
        while True:
            replay = data.get("replay")
            line = json.dumps(data, default=str) if as_json else render_replay(replay)
            if line != shown:
                print(line, file=out, flush=True)
                shown = line
            if not wait:
                return 0
            if replay is not None and replay["status"] != "running":
                return 0 if replay["status"] == "passed" else 1
            if clock() >= deadline:
                print(f"error: no verdict after {max_wait:g} s; the replay goes on", file=err)
                return 1
            sleep(poll)
            response = http.get(path)
            data = _answer(response)
            if response.status_code >= 400:
                print(
                    f"error {response.status_code} {data.get('code')}: {data.get('message')}",
                    file=err,
                )
                return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the control plane: {exc}", file=err)
        return 3
