"""The OpenAPI 3.1 schema of every endpoint (``GET /api/v1/schema``; docs at ``/api/docs``).

drf-spectacular reads DRF views. The decision endpoints (``/decide``, OFREP, the stream,
``/ping``) are plain Django views on purpose (the hot path, README "How the server decides
fast"), and the ingest and SDK views answer bodies their services build: so the schema is
generated from a URLconf of its own (``SCHEMA_URLCONF``) where every route of the real one is
served by a view that documents it. The routes come from the real URLconf, so a route added
there and not described here fails ``tests/api/test_openapi.py``; what each answers is checked
against the running API by schemathesis (the same test module).
"""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from turnout.contract import (
    PLAN_ACTIONS,
)

from migrations_app.api import catalog, plan_serializers
from migrations_app.api import datasets as dataset_api
from migrations_app.api.auth import ApiKeyAuthentication
from migrations_app.api.openapi_bodies import (
    ActionIn,
    Batch,
    DecideIn,
    Decision,
    ErrorBody,
    IngestResult,
    LabelPairs,
    LabelsIn,
    LabelsStored,
    OfrepBulk,
    OfrepError,
    OfrepEvaluation,
    OfrepIn,
    ReplayAnswer,
    ReplayCancelIn,
    ReplayIn,
    ShadowBatch,
    Snapshot,
    Status,
)

# --- responses --------------------------------------------------------------------------------

_WHY = {
    304: "Not modified (If-None-Match matched the ETag).",
    400: "The request is not valid (validation_failed with details.fields, parse_error).",
    401: "No API key, or an unknown or revoked one.",
    403: "The key lacks the scope (or, for a write, may not create plans).",
    404: "No such plan (or one this key does not see).",
    405: "Method not allowed.",
    406: "Not acceptable: this API answers JSON.",
    409: "The plan's state refuses it: illegal_transition (details.fields names frozen "
    "fields), version_conflict (details.version is the current one), ...",
    413: "The body is too large.",
    415: "Unsupported media type: send application/json (gzip allowed where said).",
    421: "The change stream is served by the stream server (Turnout-Stream-URL).",
    429: "Over the key's rate limit (Retry-After, seconds).",
    503: "The database is unreachable: retry after Retry-After.",
}


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {s: OpenApiResponse(ErrorBody, description=_WHY[s]) for s in statuses}


def ofrep_errors() -> dict[int, OpenApiResponse]:
    return {
        400: OpenApiResponse(
            OfrepError, description="PARSE_ERROR, TARGETING_KEY_MISSING, INVALID_CONTEXT."
        ),
        401: OpenApiResponse(description="No key, or an unknown one (no body)."),
        403: OpenApiResponse(description="The key lacks the decide scope (no body)."),
        405: OpenApiResponse(description="Method not allowed (no body)."),
        # Django refuses to read such a body before OFREP's view runs: the API's error body.
        413: OpenApiResponse(ErrorBody, description=_WHY[413]),
        429: OpenApiResponse(description="Over the rate limit; Retry-After (no body)."),
    }


READ_JSON = (400, 401, 403, 405, 406)
# Every API path with a body answers 413 beyond the body limit (errors.bad_request).
WRITE_JSON = (400, 401, 403, 405, 406, 413, 415)
# The plan the suite's live check creates: examples reach past 404 to the plan's own answers.
PLAN_KEY = OpenApiParameter(
    "key",
    str,
    OpenApiParameter.PATH,
    description="The plan's key.",
    examples=[OpenApiExample("plan", value="support-chat")],
)
DATASET_NAME = OpenApiParameter(
    "name", str, OpenApiParameter.PATH, description="The dataset's name.",
    examples=[OpenApiExample("dataset", value="support-week")],
)  # fmt: skip
DATASET_VERSION = OpenApiParameter("version", int, OpenApiParameter.PATH)
PAGE = [
    OpenApiParameter("offset", int, description="The first item's index (0 by default)."),
    OpenApiParameter(
        "limit", int, description="Items in the page (100 by default, 1,000 at most)."
    ),
]
DRY_RUN = OpenApiParameter(
    "dry_run", OpenApiTypes.BOOL, description="Check and say what would change; write nothing."
)


class BearerKey(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "migrations_app.api.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (made in the admin, shown once) as "
            "Authorization: Bearer <key>; X-API-Key: <key> works too.",
        }


# --- views that document the plain ones -----------------------------------------------------


class _Keyed(APIView):
    authentication_classes = [ApiKeyAuthentication]


class _Open(APIView):
    authentication_classes: list[Any] = []


def _doc(view: type[APIView], method: str, **schema: Any) -> type[APIView]:
    """A view for the schema only: ``view`` with ``method`` described."""

    def handler(self: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
        raise NotImplementedError  # never served: the schema's URLconf is not routed

    return type(
        f"{view.__name__}_{method}_{schema['operation_id']}",
        (view,),
        {method: extend_schema(**schema)(handler), "__doc__": schema.get("description", "")},
    )


DOCS: dict[str, list[type[APIView]]] = {
    "ping": [
        _doc(_Open, "get", operation_id="ping", tags=["health"], summary="Liveness (no I/O)",
             responses={200: Status}),
    ],
    "healthz": [
        _doc(_Open, "get", operation_id="healthz", tags=["health"],
             summary="Liveness and the database", responses={200: Status}),
    ],
    "metrics": [
        _doc(_Open, "get", operation_id="metrics", tags=["health"],
             summary="Prometheus metrics (bearer TURNOUT_METRICS_TOKEN, or loopback only)",
             responses={
                 (200, "text/plain"): OpenApiTypes.STR,
                 (401, "text/plain"): OpenApiTypes.STR,
                 (403, "text/plain"): OpenApiTypes.STR,
             }),
    ],
    "sdk-config": [
        _doc(_Keyed, "get", operation_id="sdk_config", tags=["sdk"],
             summary="The snapshot of every plan the key sees (ETag, If-None-Match)",
             parameters=[OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER)],
             responses={200: Snapshot, 304: OpenApiResponse(description=_WHY[304]),
                        **errors(401, 403, 405, 406, 429)}),
    ],
    "sdk-stream": [
        _doc(_Keyed, "get", operation_id="sdk_stream", tags=["sdk"],
             summary="Server-Sent Events: one config event per routing change",
             description="Served by the stream server; the API server answers 421 naming it.",
             responses={(200, "text/event-stream"): OpenApiTypes.STR,
                        **errors(401, 403, 405, 421, 429)}),
    ],
    "decide": [
        _doc(_Keyed, "post", operation_id="decide", tags=["sdk"],
             summary="The decision an SDK makes locally, for thin clients",
             request=DecideIn,
             responses={200: Decision, **errors(400, 401, 403, 404, 405, 413, 415, 429)},
             examples=[OpenApiExample("decide", {"plan": "support-chat", "unit": "user-123"},
                                      request_only=True)]),
    ],
    "ofrep-flag": [
        _doc(_Keyed, "post", operation_id="ofrep_evaluate_flag", tags=["ofrep"],
             summary="OFREP: one plan as an object flag whose variant is the arm",
             parameters=[PLAN_KEY], request=OfrepIn,
             responses={200: OfrepEvaluation,
                        404: OpenApiResponse(OfrepError, description="FLAG_NOT_FOUND"),
                        **ofrep_errors()}),
    ],
    "ofrep-flags": [
        _doc(_Keyed, "post", operation_id="ofrep_evaluate_flags", tags=["ofrep"],
             summary="OFREP bulk: every plan the key sees (ETag, If-None-Match)",
             request=OfrepIn,
             parameters=[OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER)],
             responses={200: OfrepBulk, 304: OpenApiResponse(description=_WHY[304]),
                        **ofrep_errors()}),
    ],
    "outcomes": [
        _doc(_Keyed, "post", operation_id="outcomes", tags=["report"],
             summary="A batch of request outcomes (gzip allowed)", request=Batch,
             responses={200: IngestResult, **errors(*WRITE_JSON, 503)}),
    ],
    "feedback": [
        _doc(_Keyed, "post", operation_id="feedback", tags=["report"],
             summary="Feedback events (a batch, or one event)", request=Batch,
             responses={200: IngestResult, **errors(*WRITE_JSON, 503)}),
    ],
    "app-metrics": [
        _doc(_Keyed, "post", operation_id="app_metrics", tags=["report"],
             summary="The application's per-request metric values (a batch, or one)",
             request=Batch, responses={200: IngestResult, **errors(*WRITE_JSON, 503)}),
    ],
    "shadow-samples": [
        _doc(_Keyed, "post", operation_id="shadow_samples", tags=["report"],
             summary="Production requests for the candidate to answer too", request=ShadowBatch,
             responses={200: IngestResult, **errors(*WRITE_JSON, 503)}),
    ],
    "judge-samples": [
        _doc(_Keyed, "post", operation_id="judge_samples", tags=["report"],
             summary="A split's answers for the pointwise judge to score on the rubric",
             request=ShadowBatch, responses={200: IngestResult, **errors(*WRITE_JSON, 503)}),
    ],
    "label-pairs": [
        _doc(_Keyed, "get", operation_id="label_pairs", tags=["plans"],
             summary="Random judged shadow pairs to label, blind (admin scope)",
             parameters=[PLAN_KEY, OpenApiParameter("count", int)],
             responses={200: LabelPairs, **errors(*READ_JSON, 404)}),
    ],
    "labels": [
        _doc(_Keyed, "post", operation_id="labels", tags=["plans"],
             summary="People's labels on blind pairs: the judge's calibration (admin scope)",
             parameters=[PLAN_KEY], request=LabelsIn,
             responses={200: LabelsStored, **errors(*WRITE_JSON, 404)}),
    ],
    "replay": [
        _doc(_Keyed, "get", operation_id="replay_read", tags=["plans"],
             summary="The plan's latest replay: progress, gate verdicts, cost and time",
             parameters=[PLAN_KEY], responses={200: ReplayAnswer, **errors(*READ_JSON, 404)}),
        _doc(_Keyed, "post", operation_id="replay_start", tags=["plans"],
             summary="Start the plan's replay (a draft opening with one is started; admin scope)",
             parameters=[PLAN_KEY], request=ReplayIn,
             responses={202: ReplayAnswer, **errors(*WRITE_JSON, 404, 409)}),
    ],
    "replay-cancel": [
        _doc(_Keyed, "post", operation_id="replay_cancel", tags=["plans"],
             summary="Cancel the running replay and pause the plan (admin scope)",
             parameters=[PLAN_KEY], request=ReplayCancelIn,
             responses={200: ReplayAnswer, **errors(*WRITE_JSON, 404, 409)}),
    ],
    "plans": [
        _doc(_Keyed, "get", operation_id="plans_list", tags=["plans"],
             summary="The plans this key sees, with where each is",
             responses={200: plan_serializers.PlanList, **errors(*READ_JSON)}),
        _doc(_Keyed, "post", operation_id="plans_create", tags=["plans"],
             summary="Create a draft from a plan document", request=plan_serializers.PlanWrite,
             parameters=[DRY_RUN],
             responses={201: plan_serializers.Applied, 200: plan_serializers.Applied,
                        **errors(*WRITE_JSON)}),
    ],
    "plan-status": [
        _doc(_Keyed, "get", operation_id="plan_read", tags=["plans"],
             summary="Where the plan is, the engine's latest word, and the plan (spec)",
             parameters=[PLAN_KEY],
             responses={200: plan_serializers.PlanStatusOut, **errors(*READ_JSON, 404)}),
        _doc(_Keyed, "put", operation_id="plan_apply", tags=["plans"],
             summary="Make the plan what the document says (created if missing)",
             description="Only what differs is written; the same document twice changes "
             "nothing (changed: false). Routing fields are frozen while a run is live.",
             request=plan_serializers.PlanWrite, parameters=[PLAN_KEY, DRY_RUN],
             responses={200: plan_serializers.Applied, 201: plan_serializers.Applied,
                        **errors(*WRITE_JSON, 404, 409)}),
        _doc(_Keyed, "patch", operation_id="plan_patch", tags=["plans"],
             summary="An RFC 7396 merge patch over the plan's document",
             request=OpenApiTypes.OBJECT, parameters=[PLAN_KEY, DRY_RUN],
             responses={200: plan_serializers.Applied, **errors(*WRITE_JSON, 404, 409)}),
        _doc(_Keyed, "delete", operation_id="plan_delete", tags=["plans"],
             summary="Delete a draft",
             parameters=[PLAN_KEY, OpenApiParameter("expected_version", int)],
             responses={204: None, **errors(400, 401, 403, 404, 405, 406, 409)}),
    ],
    "plan-action": [
        _doc(_Keyed, "post", operation_id="plan_act", tags=["plans"],
             summary="start, rollback, pause, resume or advance, with a reason (admin scope)",
             parameters=[PLAN_KEY, OpenApiParameter("action", str, OpenApiParameter.PATH,
                                                    enum=sorted(PLAN_ACTIONS))],
             request=ActionIn,
             responses={200: plan_serializers.PlanSummary, **errors(*WRITE_JSON, 404, 409)}),
    ],
    "datasets": [
        _doc(_Keyed, "get", operation_id="datasets_list", tags=["datasets"],
             summary="Every version of every replay dataset this key sees",
             parameters=[OpenApiParameter("name", str), *PAGE],
             responses={200: dataset_api.DatasetList, **errors(*READ_JSON)}),
        _doc(_Keyed, "post", operation_id="datasets_create", tags=["datasets"],
             summary="Make the next version of a dataset, from items or a plan's shadow samples",
             description="Every item is checked; one bad item refuses the whole set "
             "(details.problems names each, items[i] and its field). At most 10,000 items "
             "(413 batch_too_large); gzip bodies taken. A plan with no samples: 400 naming plan. "
             "A key limited to some plans adding to a name with versions of other plans (or of "
             "none): 409 dataset_name_taken.",
             request=dataset_api.DatasetIn,
             responses={201: dataset_api.DatasetOut, **errors(*WRITE_JSON, 404, 409)}),
    ],
    "dataset": [
        _doc(_Keyed, "get", operation_id="dataset_latest", tags=["datasets"],
             summary="A dataset's latest version and a page of its items",
             parameters=[DATASET_NAME, *PAGE],
             responses={200: dataset_api.DatasetDetail, **errors(*READ_JSON, 404)}),
    ],
    "dataset-version": [
        _doc(_Keyed, "get", operation_id="dataset_read", tags=["datasets"],
             summary="One version of a dataset and a page of its items",
             parameters=[DATASET_NAME, DATASET_VERSION, *PAGE],
             responses={200: dataset_api.DatasetDetail, **errors(*READ_JSON, 404)}),
        _doc(_Keyed, "delete", operation_id="dataset_delete", tags=["datasets"],
             summary="Delete one version of a dataset (refused while a replay uses it)",
             parameters=[DATASET_NAME, DATASET_VERSION],
             responses={204: None, **errors(401, 403, 404, 405, 406, 409)}),
    ],
    "catalog-models": [
        _doc(_Keyed, "get", operation_id="catalog_models", tags=["catalog"],
             summary="The models a plan may name, with prices and limits",
             responses={200: catalog.CatalogModels, **errors(*READ_JSON)}),
    ],
    "catalog-connections": [
        _doc(_Keyed, "get", operation_id="catalog_connections", tags=["catalog"],
             summary="Provider connections (variable names, never a secret)",
             responses={200: catalog.Connections, **errors(*READ_JSON)}),
    ],
    "alert-channels": [
        _doc(_Keyed, "get", operation_id="alert_channels", tags=["catalog"],
             summary="Alert channels a plan may name",
             responses={200: catalog.Channels, **errors(*READ_JSON)}),
    ],
    "templates": [
        _doc(_Keyed, "get", operation_id="templates", tags=["catalog"],
             summary="Plan templates (reusable playbooks)",
             responses={200: catalog.Templates, **errors(*READ_JSON)}),
    ],
    "guardrail-sets": [
        _doc(_Keyed, "get", operation_id="guardrail_sets", tags=["catalog"],
             summary="Guardrail sets, and the default one",
             responses={200: catalog.GuardrailSets, **errors(*READ_JSON)}),
    ],
}  # fmt: skip

# Documented, not served here: the routes of the project's URLconf outside the API.
NOT_API = frozenset({"schema", "api-docs"})


def _combined(views: list[type[APIView]]) -> type[APIView]:
    """One view with every method of ``views`` (one route may take several)."""
    attrs: dict[str, Any] = {}
    for view in views:
        for method in ("get", "post", "put", "patch", "delete"):
            if method in view.__dict__:
                attrs[method] = view.__dict__[method]
    return type(views[0].__name__ + "_all", (views[0].__mro__[1],), attrs)


def schema_patterns(real: list[Any]) -> list[URLPattern]:
    """The real URLconf's API routes, each served by the view that documents it."""
    found = []
    for pattern in real:
        name = getattr(pattern, "name", None)
        if name in NOT_API or name in ("plan-dashboard",):
            continue
        if name not in DOCS:
            raise LookupError(f"route {name!r} ({pattern.pattern}) has no OpenAPI description")
        found.append(path(str(pattern.pattern), _combined(DOCS[name]).as_view(), name=name))
    return found


def _nullable_any(node: Any) -> None:
    """A JSON field that may be null is any value: drf-spectacular writes it
    ``oneOf: [{}, {"type": "null"}]``, which null matches twice, so null would fail it."""
    if isinstance(node, dict):
        if node.get("oneOf") == [{}, {"type": "null"}]:
            del node["oneOf"]
        for value in node.values():
            _nullable_any(value)
    elif isinstance(node, list):
        for value in node:
            _nullable_any(value)


def postprocess(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """What drf-spectacular cannot infer: a plan document refuses unknown keys (a typo in a
    plan file is an error), so its request components say additionalProperties: false."""
    _nullable_any(result)
    _server_limits(result)
    components = result.get("components", {}).get("schemas", {})
    for name in (
        "PlanWriteRequest",
        "PlanDocumentRequest",
        "ArmRequest",
        "PhaseRequest",
        "GuardrailRowRequest",
        "MetricDeclarationRequest",
    ):
        if name in components:
            components[name]["additionalProperties"] = False
    return result


#: What the HTTP server (gunicorn) answers itself, before Turnout sees the request: any operation
#: can get these, with gunicorn's plain-text page as the body.
SERVER_LIMITS = {
    "414": "The request line (path and query) is longer than the server accepts "
    "(gunicorn's limit_request_line, 4094 bytes); answered by the HTTP server, no JSON body.",
    "431": "The request's header fields are larger than the server accepts "
    "(gunicorn's limits); answered by the HTTP server, no JSON body.",
}


def _server_limits(result: dict[str, Any]) -> None:
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method != "parameters" and isinstance(operation, dict):
                responses = operation.setdefault("responses", {})
                for status, why in SERVER_LIMITS.items():
                    responses.setdefault(status, {"description": why})
