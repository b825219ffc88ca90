"""Turnout's command line, against the control plane's API (``/api/v1/plans/...``).

On-call, with a key of the ``admin`` scope::

    export TURNOUT_URL=https://turnout.internal TURNOUT_API_KEY=tk_...
    python -m turnout status support-chat
    python -m turnout rollback support-chat --reason "p95 doubled after the deploy"

Plans as code (:mod:`turnout.plan_files`), with a key of the ``plans`` scope::

    python -m turnout plan validate -f plans/*.yaml    # offline, against the JSON Schema
    python -m turnout plan diff -f plans/support-chat.yaml
    python -m turnout plan apply -f plans/support-chat.yaml
    python -m turnout plan export support-chat > plans/support-chat.yaml
    python -m turnout plan list

A replay before any user sees the candidate (:mod:`turnout.replay_cli`), from CI::

    python -m turnout replay support-chat --dataset support-tickets --wait

Exit status: 0 done (``plan diff``: nothing would change), 1 the server refused or a file is
not a valid plan (what is wrong is printed, by field path; ``replay --wait``: the replay did not
pass), 2 bad usage (``plan diff``: some
plan would change), 3 the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import httpx

from turnout import plan_files, replay_cli
from turnout.contract import PLANS_PATH

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
    plan = sub.add_parser("plan", help="plans as code: validate, diff, apply, export, list")
    verbs = plan.add_subparsers(dest="verb", required=True)
    for verb, what in (
        ("validate", "check plan files against the schema, offline"),
        ("diff", "what applying the files would change (exit 2 when something would)"),
        ("apply", "make each plan what its file says (create or update; idempotent)"),
    ):
        v = verbs.add_parser(verb, help=what)
        v.add_argument(
            "-f", "--file", dest="files", nargs="+", required=True, metavar="FILE",
            help="plan files, YAML (.yaml, .yml) or JSON",
        )  # fmt: skip
    export = verbs.add_parser("export", help="a plan as a file that applies back to it")
    export.add_argument("plan")
    export.add_argument("-o", "--output", help="write to this file (default: standard output)")
    export.add_argument("--format", choices=("yaml", "json"), default=None)
    verbs.add_parser("list", help="the plans this key sees, and where each is")
    replay = sub.add_parser("replay", help="start a plan's replay; --wait: exit 0 on a pass")
    replay.add_argument("plan")
    replay.add_argument("--dataset", help="replay this dataset instead of the phase's")
    replay.add_argument("--version", type=int, help="the dataset's version (default: latest)")
    replay.add_argument("--wait", action="store_true", help="follow it to its verdict")
    replay.add_argument("--poll", type=float, default=2.0, help="seconds between looks")
    replay.add_argument(
        "--max-wait", type=float, default=replay_cli.DEFAULT_MAX_WAIT, help="give up after (s)"
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
    argv: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    transport: httpx.BaseTransport | None = None,
) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plan" and args.verb == "validate":
        return _validate(args.files, out, err)
    if not args.url or not args.api_key:
        print("error: set --url and --api-key (or TURNOUT_URL and TURNOUT_API_KEY)", file=err)
        # Bad usage is 2, except for plan files: 2 is plan diff's "changes found", which a CI
        # job accepts, so a job without the key would pass without asking any server.
        return 1 if args.command == "plan" else 2
    headers = {"Authorization": f"Bearer {args.api_key}"}
    if args.command in ("replay", "plan"):
        http = httpx.Client(
            base_url=args.url.rstrip("/"), headers=headers, timeout=args.timeout,
            transport=transport,
        )  # fmt: skip
        with http:
            if args.command == "plan":
                return _plan_command(args, http, out, err)
            return replay_cli.replay_command(
                http, args.plan, dataset=args.dataset, version=args.version, wait=args.wait,
                poll=args.poll, max_wait=args.max_wait, as_json=args.json, out=out, err=err,
            )  # fmt: skip
    base = args.url.rstrip("/") + f"{PLANS_PATH}/{args.plan}"
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


# --- plans as code ----------------------------------------------------------------------------

EXIT_CHANGES = 2


class _Refused(Exception):
    def __init__(self, status: int, data: dict[str, Any]) -> None:
        super().__init__(data.get("message"))
        self.status = status
        self.data = data


def _call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    response = http.request(method, path, **kwargs)
    try:
        data = response.json()
    except ValueError:
        data = {"code": "bad_response", "message": response.text[:200]}
    if response.status_code >= 400:
        raise _Refused(response.status_code, data if isinstance(data, dict) else {})
    return data if isinstance(data, dict) else {}


def _refusal(name: str, exc: _Refused, err: TextIO) -> None:
    print(f"{name}: error {exc.status} {exc.data.get('code')}: {exc.data.get('message')}", file=err)
    fields = (exc.data.get("details") or {}).get("fields") or {}
    for path, messages in fields.items():
        for message in messages if isinstance(messages, list) else [messages]:
            print(f"  {path}: {message}", file=err)


def _read(name: str, err: TextIO) -> dict[str, Any] | None:
    """A plan file's document, or None after printing why it is not a valid plan."""
    try:
        document = plan_files.load(name)
    except plan_files.PlanFileError as exc:
        print(f"error: {exc}", file=err)
        return None
    found = plan_files.problems(document)
    if found:
        print(f"{name}: not a valid plan file", file=err)
        for problem in found:
            print(f"  {problem}", file=err)
        return None
    return document


def _validate(files: Sequence[str], out: TextIO, err: TextIO) -> int:
    bad = [name for name in files if _read(name, err) is None]
    for name in files:
        if name not in bad:
            print(f"{name}: valid", file=out)
    return 1 if bad else 0


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _print_changes(name: str, key: str, answer: dict[str, Any], out: TextIO) -> None:
    changes = answer.get("changes") or []
    if answer.get("created"):
        verb = "would create" if answer.get("dry_run") else "created"
        print(f"{name}: {verb} plan {key}", file=out)
        return
    if not changes:
        print(f"{name}: plan {key} unchanged", file=out)
        return
    verb = "would change" if answer.get("dry_run") else "changed"
    print(f"{name}: {verb} plan {key} ({len(changes)} fields)", file=out)
    for change in changes:
        print(f"  {change['path']}: {_value(change['from'])} -> {_value(change['to'])}", file=out)


def _plan_command(args: argparse.Namespace, http: httpx.Client, out: TextIO, err: TextIO) -> int:
    try:
        if args.verb == "list":
            answer = _call(http, "GET", PLANS_PATH)
            for p in answer.get("plans", []):
                where = f"{p['phase']} {p['weight_bp'] / 100:g} %" if p.get("phase") else "-"
                print(f"{p['key']:<32} {p['status']:<12} v{p['version']:<5} {where}", file=out)
            return 0
        if args.verb == "export":
            spec = _call(http, "GET", f"{PLANS_PATH}/{args.plan}")["spec"]
            fmt = args.format or ("json" if (args.output or "").endswith(".json") else "yaml")
            text = plan_files.dump(spec, fmt=fmt)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(text)
            else:
                out.write(text)
            return 0
    except _Refused as exc:
        _refusal(args.verb, exc, err)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=err)
        return 3
    return _apply_files(args, http, out, err)


def _apply_files(args: argparse.Namespace, http: httpx.Client, out: TextIO, err: TextIO) -> int:
    """``plan diff`` and ``plan apply``: each file PUT (``?dry_run=true`` for diff) in order;
    every file is checked against the schema before any is sent."""
    documents = [(name, _read(name, err)) for name in args.files]
    if any(document is None for _, document in documents):
        return 1
    dry_run = args.verb == "diff"
    changed = refused = False
    for name, document in documents:
        assert document is not None
        key = str(document.get("key"))
        try:
            answer = _call(
                http, "PUT", f"{PLANS_PATH}/{key}",
                params={"dry_run": "true"} if dry_run else None, json=document,
            )  # fmt: skip
        except _Refused as exc:
            _refusal(name, exc, err)
            refused = True
            continue
        except httpx.HTTPError as exc:
            print(f"error: cannot reach {args.url}: {exc}", file=err)
            return 3
        _print_changes(name, key, answer, out)
        changed = changed or bool(answer.get("changed"))
    if refused:
        return 1
    return EXIT_CHANGES if dry_run and changed else 0
