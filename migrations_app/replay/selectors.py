"""Replay reads: a plan's latest replay with its progress (the API and the CLI poll it), the
replay page's rows (summary, worst items, side by side), and the datasets a replay uses."""

from __future__ import annotations

from typing import Any

from django.db.models import Count

from migrations_app.datasets.selectors import register_in_use
from migrations_app.models import MigrationPlan, ReplayCall, ReplayItem, ReplayRun

#: The worst items the page shows side by side.
WORST_ITEMS = 20


def latest_run(plan: MigrationPlan) -> ReplayRun | None:
    return (
        ReplayRun.objects.select_related("dataset")
        .filter(plan=plan)
        .order_by("-created_at", "-pk")
        .first()
    )


def progress(run: ReplayRun) -> dict[str, int]:
    """Calls per status (one GROUP BY on the replay's calls, served by replay_call_status)."""
    counts = dict(
        ReplayCall.objects.filter(replay=run)
        .values("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    return {s: int(counts.get(s, 0)) for s in ("pending", "running", "done", "failed", "cancelled")}


def run_status(run: ReplayRun) -> dict[str, Any]:
    """A replay as the API answers it."""
    summary = run.summary or {}
    return {
        "id": run.pk,
        "status": run.status,
        "decision": run.decision,
        "dataset": run.dataset.name,
        "dataset_version": run.dataset.version,
        "repeats": run.repeats,
        "items": run.items,
        "calls_total": run.calls_total,
        "progress": progress(run),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "outcome": summary.get("outcome"),
        "gates": summary.get("gates", []),
        "cost_usd": summary.get("cost_usd"),
        "seconds": summary.get("seconds"),
    }


def worst_items(run: ReplayRun, limit: int = WORST_ITEMS) -> list[dict[str, Any]]:
    """The items that did worst (lowest ``worst``: served by replay_item_worst), each with
    its request, reference, and the first repeat's answers side by side."""
    rows = list(
        ReplayItem.objects.filter(replay=run, worst__isnull=False)
        .select_related("item")
        .order_by("worst", "index")[:limit]
    )
    firsts = {
        c.index: c
        for c in ReplayCall.objects.filter(
            replay=run, index__in=[r.index for r in rows], status="done"
        ).order_by("index", "-repeat")
    }
    out = []
    for row in rows:
        call = firsts.get(row.index)
        answer = call.answer if call is not None else {}
        control = answer.get("control", {}).get("text") if answer.get("control") else None
        out.append(
            {
                "index": row.index,
                "tags": row.tags,
                "worst": row.worst,
                "flipped": row.flipped,
                "evaluated": row.evaluated,
                "messages": row.item.request.get("messages", []),
                "reference": row.item.reference,
                "control": control if control is not None else row.item.control_answer,
                "candidate": answer.get("candidate", {}).get("text"),
                "values": call.values if call is not None else {},
                "judge_reason": (call.judge or {}).get("reason") if call is not None else None,
                "sums": row.sums,
            }
        )
    return out


@register_in_use
def datasets_in_use(ids: list[int]) -> set[int]:
    """Datasets a replay measured: kept while its evidence is (the runs PROTECT them too)."""
    return set(ReplayRun.objects.filter(dataset_id__in=ids).values_list("dataset_id", flat=True))


def report_rows(plan: MigrationPlan) -> list[dict[str, Any]]:
    """The plan's replays for the migration report, oldest first: what was replayed, the
    verdict and each gate's interval."""
    rows = []
    runs = ReplayRun.objects.filter(plan=plan).select_related("dataset", "run")
    for run in runs.order_by("created_at", "pk"):
        summary = run.summary or {}
        rows.append(
            {
                "id": run.pk,
                "run": run.run.number if run.run else None,
                "created_at": run.created_at,
                "dataset": run.dataset.name,
                "version": run.dataset.version,
                "items": run.items,
                "repeats": run.repeats,
                "status": run.status,
                "decision": run.decision,
                "gates": summary.get("gates", []),
                "cost_usd": summary.get("cost_usd"),
                "seconds": summary.get("seconds"),
            }
        )
    return rows
