"""What a plan names, read-only: the model catalog, provider connections, alert channels,
templates and guardrail sets. For plan files and clients that build plans.

Secrets never: a provider connection holds the *name* of the variable with its key (shown, as
it is in a plan's review), an alert channel the names of the variables with its URL and
signing secret (not shown: a plan names a channel by its name only).
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from turnout.contract import SCOPE_ADMIN, SCOPE_PLANS

from migrations_app import secret_policy
from migrations_app.api.auth import ApiKeyAuthentication, has_scope
from migrations_app.models import (
    AlertChannel,
    GuardrailSet,
    ModelSpec,
    PlanTemplate,
    ProviderConnection,
)


class CatalogModel(serializers.Serializer):
    ref = serializers.CharField(help_text="How a plan names it: provider:model_id.")
    provider = serializers.CharField()
    model_id = serializers.CharField()
    display_name = serializers.CharField()
    input_price_per_mtok = serializers.FloatField(help_text="Dollars per million input tokens.")
    output_price_per_mtok = serializers.FloatField(help_text="Dollars per million output tokens.")
    context_window = serializers.IntegerField()
    max_output_tokens = serializers.IntegerField()


class CatalogModels(serializers.Serializer):
    models = CatalogModel(many=True)


class Connection(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    base_url = serializers.CharField(help_text="Empty: the vendor's default endpoint.")
    api_key_env = serializers.CharField(
        help_text="The NAME of the environment variable with the key; the key is never stored."
    )
    max_concurrent_calls = serializers.IntegerField()
    max_calls_per_second = serializers.IntegerField(allow_null=True)
    refused = serializers.CharField(
        help_text="Why the operator's policy refuses this connection; empty when it is usable."
    )


class Connections(serializers.Serializer):
    connections = Connection(many=True)


class Channel(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    enabled = serializers.BooleanField()


class Channels(serializers.Serializer):
    alert_channels = Channel(many=True)


class Template(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    phases = serializers.ListField(child=serializers.DictField())
    guardrail_set = serializers.CharField(
        allow_null=True, help_text="Its guardrail set; null: the default set."
    )


class Templates(serializers.Serializer):
    templates = Template(many=True)


class GuardrailSetOut(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    default = serializers.BooleanField(help_text="Applies to every new plan that names no set.")
    guardrails = serializers.ListField(child=serializers.DictField())


class GuardrailSets(serializers.Serializer):
    guardrail_sets = GuardrailSetOut(many=True)


class _Read(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope(SCOPE_PLANS, SCOPE_ADMIN)]


class CatalogModelsView(_Read):
    """``GET /api/v1/catalog/models``: the models a plan may name, with prices and limits."""

    def get(self, request: Request) -> Response:
        rows = ModelSpec.objects.select_related("provider")
        return Response(
            {
                "models": [
                    {
                        "ref": f"{m.provider.name}:{m.model_id}",
                        "provider": m.provider.name,
                        "model_id": m.model_id,
                        "display_name": m.display_name,
                        "input_price_per_mtok": float(m.input_price_per_mtok),
                        "output_price_per_mtok": float(m.output_price_per_mtok),
                        "context_window": m.context_window,
                        "max_output_tokens": m.max_output_tokens,
                    }
                    for m in rows
                ]
            }
        )


class ConnectionsView(_Read):
    """``GET /api/v1/catalog/connections``: where each provider is reached (no secret)."""

    def get(self, request: Request) -> Response:
        def refused(c: ProviderConnection) -> str:
            problems = secret_policy.connection_problems(
                api_key_env=c.api_key_env, base_url=c.base_url
            )
            return secret_policy.summary(problems) if problems else ""

        return Response(
            {
                "connections": [
                    {
                        "name": c.name,
                        "kind": c.kind,
                        "base_url": c.base_url,
                        "api_key_env": c.api_key_env,
                        "max_concurrent_calls": c.max_concurrent_calls,
                        "max_calls_per_second": c.max_calls_per_second,
                        "refused": refused(c),
                    }
                    for c in ProviderConnection.objects.all()
                ]
            }
        )


class AlertChannelsView(_Read):
    """``GET /api/v1/alert-channels``: the channels a plan may name."""

    def get(self, request: Request) -> Response:
        rows = AlertChannel.objects.values("name", "kind", "enabled")
        return Response({"alert_channels": list(rows)})


def _template(t: PlanTemplate) -> dict[str, Any]:
    return {
        "name": t.name,
        "description": t.description,
        "phases": t.phases,
        "guardrail_set": t.guardrail_set.name if t.guardrail_set else None,
    }


class TemplatesView(_Read):
    """``GET /api/v1/templates``: reusable playbooks (``template: <name>`` in a plan)."""

    def get(self, request: Request) -> Response:
        rows = PlanTemplate.objects.select_related("guardrail_set")
        return Response({"templates": [_template(t) for t in rows]})


class GuardrailSetsView(_Read):
    """``GET /api/v1/guardrail-sets``: guardrail sets (``guardrail_set: <name>``), and which one
    every new plan gets unless it says otherwise."""

    def get(self, request: Request) -> Response:
        return Response(
            {
                "guardrail_sets": [
                    {
                        "name": s.name,
                        "description": s.description,
                        "default": s.is_default,
                        "guardrails": s.guardrails,
                    }
                    for s in GuardrailSet.objects.all()
                ]
            }
        )
