"""What SDKs report: ``POST /api/v1/outcomes`` and ``POST /api/v1/feedback`` (docs/contracts.md).

Bodies may be gzip-compressed. A batch answers 200 with how many events were stored, how
many were duplicates, and each rejected event's index, field and reason: one bad event
never costs the good ones. Only a body that is not a batch at all is a 4xx.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from migrations_app import ingest, metrics
from migrations_app.api.auth import ApiKeyAuthentication, has_scope
from migrations_app.errors import DomainError

MAX_DECOMPRESSED_BYTES = 16 * 1024 * 1024


def read_json_body(request: Request) -> Any:
    """The JSON body, gunzipped when ``Content-Encoding: gzip``, with bounded sizes."""
    try:
        body = request.body
    except RequestDataTooBig:
        raise DomainError("The body is too large.", code="payload_too_large", status=413) from None
    if request.headers.get("Content-Encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, MAX_DECOMPRESSED_BYTES)
        except zlib.error:
            raise DomainError(
                "The body is not valid gzip.", code="parse_error", status=400
            ) from None
        if inflater.unconsumed_tail:
            raise DomainError(
                f"The body inflates to more than {MAX_DECOMPRESSED_BYTES} bytes.",
                code="payload_too_large",
                status=413,
            )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # not strict JSON: the standard parser decides (below) what it is
    try:
        # Python's parser reads what orjson refuses and the events' checks then reject one by
        # one: NaN and Infinity literals, integers beyond 64 bits, lone surrogates.
        return json.loads(body)
    # ValueError covers bad JSON and bad UTF-8, and also integers beyond Python's digit limit;
    # RecursionError is nesting deeper than the parser's stack.
    except (ValueError, RecursionError) as exc:
        raise DomainError(
            f"The body is not valid JSON: {str(exc)[:200]}", code="parse_error", status=400
        ) from None


class OutcomesView(APIView):
    """``POST /api/v1/outcomes``: a batch of request outcomes."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("report")]

    def post(self, request: Request) -> Response:
        result = ingest.outcomes_ingest(identity=request.user, payload=read_json_body(request))
        return Response(result.to_dict())


class FeedbackView(APIView):
    """``POST /api/v1/feedback``: one feedback event or a batch."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("report")]

    def post(self, request: Request) -> Response:
        result = ingest.feedback_ingest(payload=read_json_body(request))
        return Response(result.to_dict())


_registry = CollectorRegistry(auto_describe=False)
_registry.register(metrics.TurnoutCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` in the Prometheus text format. Protected: with ``TURNOUT_METRICS_TOKEN``
    set, a matching bearer token is required; without it, only loopback clients are served
    (put the scraper on the same host or an internal network behind a proxy)."""
    token = settings.TURNOUT_METRICS_TOKEN
    if token:
        if request.headers.get("Authorization", "") != f"Bearer {token}":
            return HttpResponse("unauthorised\n", status=401, content_type="text/plain")
    elif request.META.get("REMOTE_ADDR") not in ("127.0.0.1", "::1"):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
