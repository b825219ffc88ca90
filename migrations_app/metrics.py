"""Prometheus metrics for ``/metrics``: ingest rates, rejected events by reason, SDK-reported
drops, held feedback and queue depths.

Counters live in one Redis hash, not in process memory: the API runs as several worker
processes (and machines), and a scrape reaches only one of them. Each ingest batch adds its
counts in one pipelined round trip. Without Redis (the embedded mode) they stay in-process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from django.conf import settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from migrations_app import changes

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
}

_local: dict[str, float] = {}
_local_lock = threading.Lock()


def _field(name: str, labels: Sequence[str]) -> str:
    return "|".join((name, *labels))


def incr(counts: Mapping[str, float]) -> None:
    """Add to counters; keys are ``name|label|label`` as in :data:`COUNTERS`."""
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return
    if settings.REDIS_URL:
        pipe = changes.redis_client().pipeline(transaction=False)
        for key, value in counts.items():
            pipe.hincrbyfloat(HASH_KEY, key, value)
        pipe.execute()
        return
    with _local_lock:
        for key, value in counts.items():
            _local[key] = _local.get(key, 0.0) + value


def count_ingest(
    kind: str, *, stored: int, duplicates: int, rejected: Sequence[str], dropped: int
) -> None:
    counts: dict[str, float] = {
        _field("turnout_ingest_events", (kind, "stored")): stored,
        _field("turnout_ingest_events", (kind, "duplicate")): duplicates,
        _field("turnout_ingest_events", (kind, "rejected")): len(rejected),
        _field("turnout_sdk_dropped_events", ()): dropped,
    }
    for code in rejected:
        key = _field("turnout_ingest_rejected", (kind, code))
        counts[key] = counts.get(key, 0) + 1
    incr(counts)


def read_counters() -> dict[str, float]:
    if settings.REDIS_URL:
        raw = changes.redis_client().hgetall(HASH_KEY)
        return {k.decode(): float(v) for k, v in raw.items()}
    with _local_lock:
        return dict(_local)


class TurnoutCollector(Collector):
    """Reads the shared counters and the current gauges at scrape time."""

    def collect(self) -> Iterator[Any]:
        from migrations_app.models import Feedback

        values = read_counters()
        for name, (help_text, label_names) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=list(label_names))
            for key, value in sorted(values.items()):
                parts = key.split("|")
                if parts[0] == name and len(parts) == len(label_names) + 1:
                    family.add_metric(parts[1:], value)
            yield family
        held = GaugeMetricFamily(
            "turnout_feedback_held", "Feedback stored before its outcome arrived."
        )
        held.add_metric([], Feedback.objects.filter(outcome__isnull=True).count())
        yield held
        if settings.REDIS_URL:
            depth = GaugeMetricFamily(
                "turnout_queue_depth", "Tasks waiting in a Celery queue.", labels=["queue"]
            )
            client = changes.redis_client()
            for queue in QUEUES:
                depth.add_metric([queue], client.llen(queue))
            yield depth
