"""Prometheus metrics for ``/metrics``: ingest rates, rejected events by reason, SDK-reported
drops, held feedback and queue depths.

Counters live in one Redis hash, not in process memory: the API runs as several worker
processes (and machines), and a scrape reaches only one of them. Each ingest batch adds its
counts in one round trip. Without Redis (the embedded mode) they stay in-process.

Counting never changes an ingest's answer: it runs after the events are committed, and an
SDK told 500 would resend what was stored. While Redis is unreachable a process keeps its
counts and adds them with its next count (or scrape) once Redis answers again; only a
process that stops meanwhile loses the counts it held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from django.conf import settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from migrations_app.outcomes.event_checks import IngestResult
from migrations_app.routing import changes

HASH_KEY = "turnout:metrics"
QUEUES = ("celery",)

# counter name -> (help, label names)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "turnout_ingest_events": ("Events received by the ingest API.", ("kind", "result")),
    "turnout_ingest_rejected": ("Events rejected by the ingest API.", ("kind", "code")),
    "turnout_sdk_dropped_events": ("Events SDKs report having dropped (buffer full).", ()),
    "turnout_alert_deliveries": (
        "Alert delivery attempts by channel kind and outcome (delivered, retry, failed).",
        ("kind", "outcome"),
    ),
    "turnout_fold_failures": (
        "Folds of pending rows into the window, stage and segment aggregates that failed "
        "(their rows stay pending; outcomes/segment_rollup.py).",
        (),
    ),
}

_local: dict[str, float] = {}
_local_lock = threading.Lock()

log = logging.getLogger(__name__)
# After a failed write, counts wait this long before Redis is tried again: a Redis that is
# down must not cost every ingest request a connection attempt.
RETRY_SECONDS = 1.0
_pending: dict[str, float] = {}  # counted here, not yet in Redis
_retry_at = 0.0


def _field(name: str, labels: Sequence[str]) -> str:
    return "|".join((name, *labels))


def _add(into: dict[str, float], counts: Mapping[str, float]) -> None:
    for key, value in counts.items():
        into[key] = into.get(key, 0.0) + value


def incr(counts: Mapping[str, float]) -> None:
    """Add to counters; keys are ``name|label|label`` as in :data:`COUNTERS`. Never raises
    for an unreachable Redis: the counts wait in the process (see the module's docstring)."""
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return
    if not settings.REDIS_URL:
        with _local_lock:
            _add(_local, counts)
        return
    with _local_lock:
        _add(_pending, counts)
    _send_pending(force=False)


def _send_pending(*, force: bool) -> None:
    """Move the counts waiting in this process to Redis, all or none (MULTI/EXEC: a failure
    midway must not apply some and keep them all for another try)."""
    global _retry_at
    with _local_lock:
        if not _pending or (not force and time.monotonic() < _retry_at):
            return
        sending = dict(_pending)
        _pending.clear()
    try:
        pipe = changes.redis_client().pipeline(transaction=True)
        for key, value in sending.items():
            pipe.hincrbyfloat(HASH_KEY, key, value)
        pipe.execute()
    except Exception as exc:  # redis-py raises its own errors and OSError alike
        with _local_lock:
            _add(_pending, sending)
            first = _retry_at == 0.0
            _retry_at = time.monotonic() + RETRY_SECONDS
        if first:
            log.warning("metrics: Redis unreachable, counting in this process: %r", exc)
        return
    with _local_lock:
        if _retry_at:
            log.info("metrics: Redis is back, counts sent")
        _retry_at = 0.0


def count_ingest(kind: str, result: IngestResult, *, dropped: int = 0) -> None:
    """Count one ingest batch (``outcomes``, ``feedback``, ``shadow``): stored, duplicates,
    rejected by code, and what the SDK says it dropped."""
    counts: dict[str, float] = {
        _field("turnout_ingest_events", (kind, "stored")): result.stored,
        _field("turnout_ingest_events", (kind, "duplicate")): result.duplicates,
        _field("turnout_ingest_events", (kind, "rejected")): len(result.rejected),
        _field("turnout_sdk_dropped_events", ()): dropped,
    }
    for rejection in result.rejected:
        key = _field("turnout_ingest_rejected", (kind, rejection.code))
        counts[key] = counts.get(key, 0) + 1
    incr(counts)


def count_fold_failure() -> None:
    incr({_field("turnout_fold_failures", ()): 1})


def read_counters() -> dict[str, float]:
    if settings.REDIS_URL:
        _send_pending(force=True)  # a scrape shows what this process counted meanwhile
        raw = changes.redis_client().hgetall(HASH_KEY)
        return {k.decode(): float(v) for k, v in raw.items()}
    with _local_lock:
        return dict(_local)


class TurnoutCollector(Collector):
    """Reads the shared counters and the current gauges at scrape time."""

    def collect(self) -> Iterator[Any]:
        from django.db.models import Min
        from django.utils import timezone

        from migrations_app.models import Feedback, PendingRollup, PendingSegments

        try:
            values: dict[str, float] | None = read_counters()
        except Exception as exc:  # redis-py raises its own errors and OSError alike
            # A scrape while Redis is away still answers what the database knows; the counters
            # are left out rather than shown as zero (a counter that drops reads as a reset).
            log.warning("metrics: counters unreadable, Redis unreachable: %r", exc)
            values = None
        available = GaugeMetricFamily(
            "turnout_counters_available",
            "1 when the shared counters could be read for this scrape, 0 when Redis was unreachable.",
        )
        available.add_metric([], 0 if values is None else 1)
        yield available
        for name, (help_text, label_names) in COUNTERS.items() if values is not None else ():
            family = CounterMetricFamily(name, help_text, labels=list(label_names))
            for key, value in sorted(values.items()):
                parts = key.split("|")
                if parts[0] == name and len(parts) == len(label_names) + 1:
                    family.add_metric(parts[1:], value)
            if not label_names and not family.samples:
                # A counter with no labels shows 0 before its first count: an alert on its
                # increase (turnout_fold_failures_total) sees the first one, which a series
                # appearing at 1 would not show.
                family.add_metric([], 0.0)
            yield family
        held = GaugeMetricFamily(
            "turnout_feedback_held", "Feedback stored before its outcome arrived."
        )
        held.add_metric([], Feedback.objects.filter(outcome__isnull=True, refused="").count())
        yield held
        # Ingest's pending rows, folded about once a second per web process and before every
        # read: a count or an age that keeps growing is a fold that keeps failing.
        pending = GaugeMetricFamily(
            "turnout_pending_rollup_rows",
            "Batches' parts waiting to be folded into the window, stage and segment aggregates.",
        )
        pending.add_metric([], PendingRollup.objects.count() + PendingSegments.objects.count())
        yield pending
        oldest = PendingRollup.objects.aggregate(at=Min("created_at"))["at"]
        age = GaugeMetricFamily(
            "turnout_pending_rollup_oldest_seconds",
            "Age of the oldest batch part waiting to be folded (0 when none waits).",
        )
        age.add_metric([], max(0.0, (timezone.now() - oldest).total_seconds()) if oldest else 0.0)
        yield age
        if settings.REDIS_URL:
            depth = GaugeMetricFamily(
                "turnout_queue_depth", "Tasks waiting in a Celery queue.", labels=["queue"]
            )
            client = changes.redis_client()
            try:
                for queue in QUEUES:
                    depth.add_metric([queue], client.llen(queue))
            except Exception:  # unreachable: no depth is better than a failed scrape
                return
            yield depth
