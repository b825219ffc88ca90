"""On-call's API: a plan's status, and rollback / pause / resume / advance with a reason.

For scripts, chat-ops and ``python -m turnout``. Needs an API key with the ``admin`` scope
(restricted keys see only their plans). Every action goes through the lifecycle services,
so it is compare-and-set, audited with the key as actor, and published to every SDK.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from migrations_app import plans, selectors
from migrations_app.api.auth import ApiKeyAuthentication, has_scope
from migrations_app.errors import NotFound, ValidationFailed
from migrations_app.models import MigrationPlan

ACTIONS = {
    "rollback": plans.plan_rollback,
    "pause": plans.plan_pause,
    "resume": plans.plan_resume,
    "advance": plans.plan_advance,
}


def _plan_for(request: Request, key: str) -> MigrationPlan:
    plan = (
        MigrationPlan.objects.select_related("current_run", "current_stage").filter(key=key).first()
    )
    if plan is None or not request.user.may_see(plan.pk):
        raise NotFound(
            f"No plan with key {key!r}.", code="plan_not_found", details={"field": "plan"}
        )
    return plan


def plan_status(plan: MigrationPlan) -> dict[str, Any]:
    """What on-call needs at a glance: where the plan is and the engine's latest word."""
    here = selectors.plan_position(plan)
    latest = selectors.latest_evaluation(plan.current_stage) if plan.current_stage else None
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


class PlanStatusView(APIView):
    """``GET /api/v1/plans/{key}``."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("admin")]

    def get(self, request: Request, key: str) -> Response:
        return Response(plan_status(_plan_for(request, key)))


class PlanActionView(APIView):
    """``POST /api/v1/plans/{key}/{action}`` with ``{"reason": "...", "expected_version": 7}``."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("admin")]

    class Input(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        expected_version = serializers.IntegerField(min_value=1, required=False)

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
                "A reason is required.",
                details={"fields": form.errors if data is not None else {"body": ["An object."]}},
            )
        plan = _plan_for(request, key)
        updated = service(
            plan_key=plan.key,
            actor=plans.Actor.for_api_key(request.user.name),
            reason=form.validated_data["reason"],
            expected_version=form.validated_data.get("expected_version"),
        )
        return Response(plan_status(updated))
