"""The judge's endpoints: ``POST /api/v1/judge-samples`` (the SDK's samples of a split's answers
for the pointwise judge, report scope) and the labelling API people and scripts use to label
shadow pairs blind (admin scope: labels decide whether the judge's guardrails may act):

- ``GET /api/v1/plans/{key}/label-pairs?count=N``: up to N random judged pairs of the current
  run that this key has not labelled, blind (``pair``, ``messages``, ``answer_a``, ``answer_b``);
- ``POST /api/v1/plans/{key}/labels`` ``{"labels": [{"pair", "choice": "a"|"b"|"tie"|"skip"}]}``:
  all stored or none, answering the judge's calibration as it now stands.
"""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from turnout.contract import SCOPE_ADMIN

from migrations_app.api.auth import ApiKeyAuthentication, has_scope
from migrations_app.api.ingest import read_json_body
from migrations_app.errors import NotFound, ValidationFailed
from migrations_app.judge import labels, samples
from migrations_app.judge.selectors import run_calibration
from migrations_app.models import MigrationPlan
from migrations_app.plans.json_checks import whole_number


class JudgeSamplesView(APIView):
    """A batch ``{"samples": [...]}``; answers like the other ingest endpoints."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("report")]

    def post(self, request: Request) -> Response:
        payload = read_json_body(request)
        return Response(
            samples.judge_samples_ingest(identity=request.user, payload=payload).to_dict()
        )


def _plan(request: Request, key: str) -> MigrationPlan:
    plan = (
        MigrationPlan.objects.select_related("current_run", "judge_model").filter(key=key).first()
    )
    if plan is None or not request.user.may_see(plan.pk):
        raise NotFound(
            f"No plan with key {key!r}.", code="plan_not_found", details={"field": "plan"}
        )
    return plan


def labeller_of(request: Request) -> str:
    """Labels given through the API are the key's: one label per key and pair."""
    return f"api key {request.user.name}"


def _calibration(plan: MigrationPlan) -> dict[str, Any] | None:
    trust = run_calibration(plan)
    return trust.to_dict() if trust is not None else None


class LabelPairsView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope(SCOPE_ADMIN)]

    def get(self, request: Request, key: str) -> Response:
        plan = _plan(request, key)
        raw = request.query_params.get("count", "10")
        count = whole_number(raw, 10**6)
        if count is None:
            raise ValidationFailed(
                "count is a whole number.",
                details={"field": "count", "fields": {"count": ["A whole number."]}},
            )
        pairs = labels.label_pairs(plan=plan, labeller=labeller_of(request), count=count)
        return Response(
            {
                "pairs": [p.to_dict() for p in pairs],
                "choices": list(labels.CHOICES),
                "labelled": labels.labelled_count(plan, labeller_of(request)),
            }
        )


class LabelsView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope(SCOPE_ADMIN)]

    def post(self, request: Request, key: str) -> Response:
        plan = _plan(request, key)
        body = read_json_body(request)
        given = body.get("labels") if isinstance(body, dict) else None
        if not isinstance(given, list):
            raise ValidationFailed(
                "The body must be an object with a 'labels' list.",
                details={"field": "labels", "fields": {"labels": ["A list."]}},
            )
        parsed = []
        for i, item in enumerate(given):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("pair"), str)
                and isinstance(item.get("choice"), str)
            ):
                raise ValidationFailed(
                    "Each label is an object with a pair id and a choice.",
                    details={
                        "field": f"labels[{i}]",
                        "fields": {f"labels[{i}]": ["{pair, choice}"]},
                    },
                )
            parsed.append(labels.LabelIn(pair=item["pair"][:64], choice=item["choice"][:8]))
        stored = labels.label_record(plan=plan, labeller=labeller_of(request), labels=parsed)
        return Response({"stored": stored, "calibration": _calibration(plan)})
