from django.urls import path

from migrations_app import views
from migrations_app.api import ingest, sdk, shadow
from migrations_app.api import plans as plan_api
from migrations_app.api import urls as decisions

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("api/v1/sdk/config", sdk.ConfigView.as_view(), name="sdk-config"),
    path("api/v1/sdk/stream", sdk.stream, name="sdk-stream"),
    path("api/v1/outcomes", ingest.OutcomesView.as_view(), name="outcomes"),
    path("api/v1/feedback", ingest.FeedbackView.as_view(), name="feedback"),
    path("api/v1/shadow-samples", shadow.ShadowSamplesView.as_view(), name="shadow-samples"),
    path("api/v1/plans/<str:key>", plan_api.PlanStatusView.as_view(), name="plan-status"),
    path(
        "api/v1/plans/<str:key>/<str:action>",
        plan_api.PlanActionView.as_view(),
        name="plan-action",
    ),
    path("metrics", ingest.metrics_view, name="metrics"),
    *decisions.urlpatterns,
]
