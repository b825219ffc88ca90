"""``GET /metrics``: Turnout's counters and gauges in the Prometheus text format."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from migrations_app.outcomes import metrics

_registry = CollectorRegistry(auto_describe=False)
_registry.register(metrics.TurnoutCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in the Prometheus text format. Protected: with ``TURNOUT_METRICS_TOKEN``
    set, a matching bearer token is required; without it, only loopback clients are served
    (put the scraper on the same host or an internal network behind a proxy)."""
    token = settings.TURNOUT_METRICS_TOKEN
    if token:
        # Constant time: how long a wrong guess takes says nothing of how much of it was right.
        # Bytes, as a header may carry any character (compare_digest refuses non-ASCII str).
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return HttpResponse("unauthorised\n", status=401, content_type="text/plain")
    elif request.META.get("REMOTE_ADDR") not in ("127.0.0.1", "::1"):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
