"""The replay's API: ``POST /api/v1/plans/{key}/replay`` starts it (a draft plan whose first
phase is a replay is started too), ``GET`` the same path reads its progress and verdict (the
CLI polls it), ``POST /api/v1/plans/{key}/replay/cancel`` cancels it. Actions: the ``admin``
scope, as the plan actions."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from turnout.contract import SCOPE_ADMIN, SCOPE_PLANS

from migrations_app.api.auth import ApiKeyAuthentication, has_scope
from migrations_app.api.plans import _plan_for, plan_status
from migrations_app.datasets import selectors as datasets
from migrations_app.errors import IllegalTransition, ValidationFailed
from migrations_app.models import MigrationPlan, PlanStatus
from migrations_app.plans import lifecycle
from migrations_app.replay import selectors, services, tasks


def _body(request: Request, form: type[serializers.Serializer]) -> dict[str, Any]:
    data = request.data if isinstance(request.data, dict) else None
    checked = form(data=data)
    if data is None or not checked.is_valid():
        raise ValidationFailed(
            "The request is not valid.",
            details={"fields": checked.errors if data is not None else {"body": ["An object."]}},
        )
    return dict(checked.validated_data)


def _answer(plan: MigrationPlan) -> dict[str, Any]:
    plan.refresh_from_db()
    run = selectors.latest_run(plan)
    return {"plan": plan_status(plan), "replay": None if run is None else selectors.run_status(run)}


class ReplayView(APIView):
    authentication_classes = [ApiKeyAuthentication]

    class Input(serializers.Serializer):
        reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)
        dataset = serializers.RegexField(r"^[a-z0-9][a-z0-9._-]{0,62}$", required=False)
        version = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False)

    def get_permissions(self) -> list[Any]:
        scopes = (SCOPE_PLANS, SCOPE_ADMIN) if self.request.method == "GET" else (SCOPE_ADMIN,)
        return [has_scope(*scopes)()]

    def get(self, request: Request, key: str) -> Response:
        return Response(_answer(_plan_for(request, key)))

    def post(self, request: Request, key: str) -> Response:
        body = _body(request, self.Input)
        plan = _plan_for(request, key)
        phases = list(plan.phases.all())
        if not phases or phases[0].kind != "replay":
            raise IllegalTransition(
                f"Plan {plan.key!r} has no replay phase: add one as its first phase.",
                code="no_replay_phase",
                details={"field": "phases"},
            )
        name = body.get("dataset")
        settings_ = phases[0].replay or {}
        # Checked before anything changes: a typo starts nothing.
        datasets.get(
            name or str(settings_.get("dataset")),
            body.get("version") if name else settings_.get("version"),
            plan_ids=request.user.plan_ids if name else None,
            for_plan=plan.pk,
        )
        actor = lifecycle.Actor.for_api_key(request.user.name)
        if plan.status == PlanStatus.DRAFT:
            try:
                lifecycle.plan_start(
                    plan_key=plan.key, actor=actor, reason=body.get("reason") or "replay"
                )
            except IllegalTransition:
                # Two starts at once (two CI jobs): the one that lost follows the replay the
                # other started; a plan still a draft could not start, and says why.
                plan.refresh_from_db()
                if plan.status == PlanStatus.DRAFT:
                    raise
            plan.refresh_from_db()
        if plan.status != PlanStatus.RUNNING or plan.phase_index != 0:
            raise IllegalTransition(
                f"Plan {plan.key!r} is {plan.status} at phase {plan.phase_index + 1}: a replay "
                "runs at the plan's first phase, while it runs.",
                details={"status": plan.status, "phase_index": plan.phase_index},
            )
        run = services.replay_start(
            plan_id=plan.pk, created_by=actor.label, dataset=name, version=body.get("version")
        )
        if run is not None:  # committed: its calls go to the workers now
            tasks.enqueue_calls(services.pending_ids(run))
        return Response(_answer(plan), status=202)


class ReplayCancelView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope(SCOPE_ADMIN)]

    class Input(serializers.Serializer):
        reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)

    def post(self, request: Request, key: str) -> Response:
        body = _body(request, self.Input)
        plan = _plan_for(request, key)
        services.replay_cancel(
            plan_key=plan.key,
            actor=lifecycle.Actor.for_api_key(request.user.name),
            reason=body.get("reason") or "Replay cancelled",
        )
        return Response(_answer(plan))
