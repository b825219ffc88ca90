"""The plans API: plans as code, and on-call's status and actions.

- ``GET /api/v1/plans``: the plans a key sees, with where each is.
- ``POST /api/v1/plans``: create a draft from a plan document.
- ``GET /api/v1/plans/{key}``: where the plan is, the engine's latest word, and ``spec``: the
  plan as a document (a plan file that applies back unchanged).
- ``PUT /api/v1/plans/{key}``: make the plan what the document says (created if missing); only
  what differs is written, and a document that changes nothing writes nothing.
- ``PATCH /api/v1/plans/{key}``: an RFC 7396 merge patch over the plan's document.
- ``DELETE /api/v1/plans/{key}``: a draft only.
- ``POST /api/v1/plans/{key}/{action}``: start, rollback, pause, resume, advance with a reason.

Reads take a key with the ``plans`` or the ``admin`` scope, writes the ``plans`` scope, actions
the ``admin`` scope; a key limited to some plans sees and changes only those, and cannot create
one. Every write is checked by the one plan validation (``plans.validation``, the admin's
too), compare-and-set on the version (``expected_version``), audited with the key as actor,
and published to every SDK. ``?dry_run=true`` checks and says what would change, writing
nothing. Routing fields (key, arms, phases, guardrails) are frozen while a run is live.

Start runs the start checks first: a plan that cannot run is a 409 ``plan_not_startable``;
warnings are a 409 ``start_warnings`` listing them (``details.warnings``) and the codes to
send back as ``acknowledge`` to start anyway. A key starts only a draft: restarting a
rolled-back plan is a person's decision (admin or dashboard).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from turnout.contract import SCOPE_ADMIN, SCOPE_PLANS

from migrations_app.api.auth import ApiKeyAuthentication, KeyIdentity, has_scope
from migrations_app.api.errors import error_paths
from migrations_app.api.plan_serializers import PlanWrite, plan_values
from migrations_app.errors import DomainError, NotFound, ValidationFailed, VersionConflict
from migrations_app.guardrails.selectors import latest_evaluation
from migrations_app.models import MigrationPlan
from migrations_app.plans import edits, lifecycle
from migrations_app.plans.document import (
    document_changes,
    merge_patch,
    plan_document,
    resolved_document,
)
from migrations_app.plans.json_checks import whole_number
from migrations_app.plans.selectors import plan_position
from migrations_app.plans.validation import plan_check

ACTIONS = {
    "start": lifecycle.plan_start,
    "rollback": lifecycle.plan_rollback,
    "pause": lifecycle.plan_pause,
    "resume": lifecycle.plan_resume,
    "advance": lifecycle.plan_advance,
}


READ = has_scope(SCOPE_PLANS, SCOPE_ADMIN)
WRITE = has_scope(SCOPE_PLANS)


def _plans() -> QuerySet[MigrationPlan]:
    """Plans with what their status and their document read, in a fixed number of queries."""
    return MigrationPlan.objects.select_related(
        "current_run",
        "current_stage",
        "control_model__provider",
        "candidate_model__provider",
        "judge_model__provider",
    ).prefetch_related("phases", "guardrails", "alert_channels", "metric_definitions")


def _not_found(key: str) -> NotFound:
    return NotFound(f"No plan with key {key!r}.", code="plan_not_found", details={"field": "plan"})


def _plan_for(request: Request, key: str) -> MigrationPlan:
    plan = _plans().filter(key=key).first()
    if plan is None or not request.user.may_see(plan.pk):
        raise _not_found(key)
    return plan


def _summary(plan: MigrationPlan) -> dict[str, Any]:
    here = plan_position(plan)
    return {
        "key": plan.key,
        "name": plan.name,
        "status": plan.status,
        "version": plan.version,
        "run": plan.current_run.number if plan.current_run else 0,
        "phase": here.phase,
        "phase_index": plan.phase_index,
        "step_index": plan.step_index,
        "weight_bp": here.weight_bp,
        "shadow_bp": here.shadow_bp,
        "step_started_at": plan.step_started_at,
    }


def plan_status(plan: MigrationPlan) -> dict[str, Any]:
    """What on-call needs at a glance: where the plan is and the engine's latest word."""
    latest = latest_evaluation(plan.current_stage) if plan.current_stage else None
    return {
        **_summary(plan),
        "latest_evaluation": None
        if latest is None
        else {
            "at": latest.created_at,
            "action": latest.action,
            "acted": latest.acted,
            "reasons": latest.decision.get("reasons", []),
            "control_requests": latest.control_requests,
            "candidate_requests": latest.candidate_requests,
            "guardrails": [
                {
                    "metric": g["metric"],
                    "status": g["verdict"]["status"],
                    "summary": g["verdict"]["summary"],
                }
                for g in latest.decision.get("guardrails", [])
            ],
        },
    }


def plan_body(plan: MigrationPlan) -> dict[str, Any]:
    """``GET /api/v1/plans/{key}``'s answer: the status, and the plan as a document."""
    return {**plan_status(plan), "spec": plan_document(plan)}


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "1", "false", "0"):
        raise ValidationFailed(
            f"{name} is true or false.", details={"fields": {name: ["true or false."]}}
        )
    return value in ("true", "1")


def _version_param(request: Request) -> int | None:
    value = request.query_params.get("expected_version")
    if value is None:
        return None
    version = whole_number(value, 2**31 - 1)
    if version is None or version < 1:
        raise ValidationFailed(
            "expected_version is a plan version.",
            details={"fields": {"expected_version": ["A whole number, 1 or more."]}},
        )
    return version


def _document(data: Any) -> dict[str, Any]:
    """The body as a checked plan document (the shape; the plan validation comes after)."""
    if not isinstance(data, Mapping):
        raise ValidationFailed(
            "The body is a plan document (a JSON object).",
            details={"fields": {"body": ["A JSON object."]}},
        )
    form = PlanWrite(data=data)
    if not form.is_valid():
        raise ValidationFailed(
            "The plan is not valid.", details={"fields": error_paths(form.errors)}
        )
    return dict(form.validated_data)


def _may_create(identity: KeyIdentity) -> None:
    if identity.plan_ids is not None:
        raise DomainError(
            "This API key sees only the plans on its list, so it cannot create one: use a key "
            "for every plan.",
            code="forbidden",
            status=403,
        )


def _applied(applied: edits.Applied, *, dry_run: bool) -> dict[str, Any]:
    plan = _plans().get(pk=applied.plan.pk) if applied.plan is not None else None
    return {
        "changed": bool(applied.changes),
        "created": applied.created,
        "dry_run": dry_run,
        "changes": [c.to_dict() for c in applied.changes],
        "plan": plan_body(plan) if plan is not None else None,
    }


class _PlansAPI(APIView):
    authentication_classes = [ApiKeyAuthentication]

    def get_permissions(self) -> list[BasePermission]:
        return [(READ if self.request.method in ("GET", "HEAD") else WRITE)()]

    def apply(
        self, request: Request, key: str, document: dict[str, Any], *, dry_run: bool
    ) -> Response:
        identity: KeyIdentity = request.user
        existing = MigrationPlan.objects.filter(key=key).values_list("pk", flat=True).first()
        if existing is not None and not identity.may_see(existing):
            raise _not_found(key)
        if existing is None:
            _may_create(identity)
        applied = edits.plan_apply(
            key=key,
            values=plan_values(document),
            actor=lifecycle.Actor.for_api_key(identity.name),
            expected_version=document.get("expected_version"),
            dry_run=dry_run,
        )
        status = 201 if applied.created and not dry_run else 200
        return Response(_applied(applied, dry_run=dry_run), status=status)


class PlansView(_PlansAPI):
    """``GET /api/v1/plans`` (the plans this key sees) and ``POST /api/v1/plans`` (create)."""

    def get(self, request: Request) -> Response:
        plans = _plans().prefetch_related(None).prefetch_related("phases")
        if request.user.plan_ids is not None:
            plans = plans.filter(pk__in=request.user.plan_ids)
        return Response({"plans": [_summary(p) for p in plans]})

    def post(self, request: Request) -> Response:
        dry_run = _flag(request, "dry_run")
        document = _document(request.data)
        _may_create(request.user)
        if dry_run:
            check = plan_check(plan_values(document))
            if check.plan is None:
                raise ValidationFailed("The plan is not valid.", details={"fields": check.errors})
            changes = document_changes({}, resolved_document(check.plan))
            return Response(_applied(edits.Applied(None, True, changes), dry_run=True), status=200)
        plan = edits.plan_create_from(
            plan_values(document),
            actor=lifecycle.Actor.for_api_key(request.user.name),
        )
        changes = document_changes({}, plan_document(plan))
        return Response(_applied(edits.Applied(plan, True, changes), dry_run=False), status=201)


# A PATCH without expected_version merged again when another edit landed while it was merged.
_PATCH_ATTEMPTS = 3


class PlanView(_PlansAPI):
    """``GET``, ``PUT``, ``PATCH``, ``DELETE /api/v1/plans/{key}``."""

    def get(self, request: Request, key: str) -> Response:
        return Response(plan_body(_plan_for(request, key)))

    def put(self, request: Request, key: str) -> Response:
        dry_run = _flag(request, "dry_run")
        return self.apply(request, key, _document(request.data), dry_run=dry_run)

    def patch(self, request: Request, key: str) -> Response:
        dry_run = _flag(request, "dry_run")
        plan = _plan_for(request, key)
        if not isinstance(request.data, Mapping):
            raise ValidationFailed(
                "The body is a JSON merge patch (a JSON object).",
                details={"fields": {"body": ["A JSON object."]}},
            )
        patch = dict(request.data)
        expected = patch.pop("expected_version", None)
        # The patch is merged into the document as read here, and the whole merged document is
        # applied: it is applied only to that version (the caller's, or else the one read), so
        # an edit landing in between is never written back over. Without the caller's version,
        # the patch is merged again into the plan as it now is.
        attempts = 1 if expected is not None else _PATCH_ATTEMPTS
        while True:
            merged = merge_patch(plan_document(plan), patch)
            merged["expected_version"] = plan.version if expected is None else expected
            try:
                return self.apply(request, key, _document(merged), dry_run=dry_run)
            except VersionConflict:
                attempts -= 1
                if not attempts:
                    raise
                plan = _plan_for(request, key)

    def delete(self, request: Request, key: str) -> Response:
        expected = _version_param(request)
        plan = _plan_for(request, key)
        edits.plan_delete(
            key=plan.key,
            actor=lifecycle.Actor.for_api_key(request.user.name),
            expected_version=expected,
        )
        return Response(status=204)


class _WarningCode(serializers.RegexField):
    """A start warning's code: a string as the API gave it (a number is not coerced)."""

    def __init__(self) -> None:
        super().__init__(r"^[a-z_]{1,64}$", max_length=64)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class PlanActionView(APIView):
    """``POST /api/v1/plans/{key}/{action}`` with ``{"reason": "...", "expected_version": 7}``."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope(SCOPE_ADMIN)]

    class Input(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        expected_version = serializers.IntegerField(min_value=1, required=False)
        # Start only: the warning codes the caller accepts (from a start_warnings answer).
        acknowledge = serializers.ListField(child=_WarningCode(), max_length=50, required=False)

    def post(self, request: Request, key: str, action: str) -> Response:
        service = ACTIONS.get(action)
        if service is None:
            raise NotFound(
                f"No action {action!r}; use one of {sorted(ACTIONS)}.",
                code="unknown_action",
                details={"field": "action"},
            )
        data = request.data if isinstance(request.data, dict) else None
        form = self.Input(data=data)
        if data is None or not form.is_valid():
            raise ValidationFailed(
                "A reason is required."
                if data is None or "reason" in form.errors
                else "The request is not valid.",
                details={"fields": form.errors if data is not None else {"body": ["An object."]}},
            )
        plan = _plan_for(request, key)
        extra: dict[str, Any] = {}
        if action == "start":
            extra["acknowledged"] = form.validated_data.get("acknowledge", [])
        updated = service(
            plan_key=plan.key,
            actor=lifecycle.Actor.for_api_key(request.user.name),
            reason=form.validated_data["reason"],
            expected_version=form.validated_data.get("expected_version"),
            **extra,
        )
        return Response(plan_status(updated))
