"""On-call's command line: ``python -m turnout status|rollback|pause|resume|advance <plan>``.

Talks to the control plane's API (``/api/v1/plans/...``) with a key of the ``admin`` scope::

    export TURNOUT_URL=https://turnout.internal TURNOUT_API_KEY=tk_...
    python -m turnout status support-chat
    python -m turnout rollback support-chat --reason "p95 doubled after the deploy"

Exit status: 0 done, 1 the server refused (its error code and message are printed),
2 bad usage, 3 the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import httpx

ACTIONS = ("rollback", "pause", "resume", "advance")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m turnout", description="On-call commands for Turnout migration plans."
    )
    parser.add_argument("--url", default=os.environ.get("TURNOUT_URL"), help="$TURNOUT_URL")
    parser.add_argument(
        "--api-key", default=os.environ.get("TURNOUT_API_KEY"), help="$TURNOUT_API_KEY"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    parser.add_argument("--timeout", type=float, default=10.0)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="where a plan is, and the engine's latest verdicts").add_argument(
        "plan"
    )
    for action in ACTIONS:
        p = sub.add_parser(action, help=f"{action} a plan (audited, with your reason)")
        p.add_argument("plan")
        p.add_argument("--reason", required=True, help="why (stored in the audit trail)")
        p.add_argument(
            "--expected-version",
            type=int,
            help="refuse if the plan changed since you looked at this version",
        )
    return parser


def render_status(status: dict[str, Any]) -> str:
    """The status answer as a few lines for a terminal."""
    lines = [
        f"{status['key']} ({status['name']}): {status['status']}, version {status['version']}, "
        f"run {status['run']}",
    ]
    if status.get("phase"):
        lines.append(
            f"  {status['phase']} phase {status['phase_index']} step {status['step_index']}: "
            f"candidate {status['weight_bp'] / 100:g} %, shadow {status['shadow_bp'] / 100:g} %"
        )
    latest = status.get("latest_evaluation")
    if latest:
        lines.append(
            f"  engine at {latest['at']}: {latest['action']}"
            f"{' (acted)' if latest['acted'] else ''} on {latest['control_requests']} control / "
            f"{latest['candidate_requests']} candidate requests"
        )
        lines.extend(f"    {g['status']:>16}  {g['summary']}" for g in latest["guardrails"])
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    args = _parser().parse_args(argv)
    if not args.url or not args.api_key:
        print("error: set --url and --api-key (or TURNOUT_URL and TURNOUT_API_KEY)", file=err)
        return 2
    base = args.url.rstrip("/") + f"/api/v1/plans/{args.plan}"
    headers = {"Authorization": f"Bearer {args.api_key}"}
    try:
        if args.command == "status":
            response = httpx.get(base, headers=headers, timeout=args.timeout)
        else:
            body: dict[str, Any] = {"reason": args.reason}
            if args.expected_version is not None:
                body["expected_version"] = args.expected_version
            response = httpx.post(
                f"{base}/{args.command}", json=body, headers=headers, timeout=args.timeout
            )
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=err)
        return 3
    try:
        data = response.json()
    except ValueError:
        data = {"code": "bad_response", "message": response.text[:200]}
    if response.status_code >= 400:
        print(f"error {response.status_code} {data.get('code')}: {data.get('message')}", file=err)
        return 1
    print(json.dumps(data, indent=2) if args.json else render_status(data), file=out)
    return 0
