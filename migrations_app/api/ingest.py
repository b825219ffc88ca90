"""What SDKs report: ``POST /api/v1/outcomes``, ``POST /api/v1/feedback`` and ``POST /api/v1/metrics``
(docs/contracts.md).

Bodies may be gzip-compressed. A batch answers 200 with how many events were stored, how
many were duplicates, and each rejected event's index, field and reason: one bad event
never costs the good ones. Only a body that is not a batch at all is a 4xx.
"""

from __future__ import annotations

import zlib
from typing import Any

from django.core.exceptions import RequestDataTooBig
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from turnout.contract import MAX_DECOMPRESSED_BYTES

from migrations_app.api.auth import ApiKeyAuthentication, has_scope
from migrations_app.api.parsers import BodyNotJSON, parse_json
from migrations_app.errors import DomainError
from migrations_app.outcomes import feedback, ingest, metric_values
from migrations_app.outcomes.collector import collector_paused


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
        # No depth bound for the whole body: each event's checks bound what they walk (a
        # shadow sample's JSON schema too deep is that sample's rejection, not the batch's).
        return parse_json(body, max_depth=None)
    except BodyNotJSON as exc:
        raise DomainError(
            f"The body is not valid JSON: {str(exc)[:200]}", code="parse_error", status=400
        ) from None


class OutcomesView(APIView):
    """``POST /api/v1/outcomes``: a batch of request outcomes."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("report")]

    def post(self, request: Request) -> Response:
        # The body's objects too are made with the collector paused (outcomes/collector.py).
        with collector_paused():
            payload = read_json_body(request)
            result = ingest.outcomes_ingest(identity=request.user, payload=payload)
        return Response(result.to_dict())


class FeedbackView(APIView):
    """``POST /api/v1/feedback``: one feedback event or a batch."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("report")]

    def post(self, request: Request) -> Response:
        result = feedback.feedback_ingest(identity=request.user, payload=read_json_body(request))
        return Response(result.to_dict())


class MetricsView(APIView):
    """``POST /api/v1/metrics``: one per-request metric value or a batch (``{id, decision_id,
    plan?, name, value, ts}``), for the application's own metrics reported after the answer
    (a task completed minutes later, by another service)."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("report")]

    def post(self, request: Request) -> Response:
        result = metric_values.metrics_ingest(
            identity=request.user, payload=read_json_body(request)
        )
        return Response(result.to_dict())
