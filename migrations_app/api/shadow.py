"""``POST /api/v1/shadow-samples``: production requests for the candidate to answer too."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from migrations_app.api.auth import ApiKeyAuthentication, has_scope
from migrations_app.api.ingest import read_json_body
from migrations_app.shadow import samples


class ShadowSamplesView(APIView):
    """A batch ``{"samples": [...]}``; answers like the other ingest endpoints."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [has_scope("report")]

    def post(self, request: Request) -> Response:
        payload = read_json_body(request)
        return Response(
            samples.shadow_samples_ingest(identity=request.user, payload=payload).to_dict()
        )
