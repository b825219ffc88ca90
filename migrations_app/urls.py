from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from migrations_app import converters, views  # noqa: F401  (converters: <plan_key:...>)
from migrations_app.api import catalog, ingest, judge, metrics, sdk, shadow
from migrations_app.api import datasets as dataset_api
from migrations_app.api import plans as plan_api
from migrations_app.api import replay as replay_api
from migrations_app.api import urls as decisions

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("api/v1/sdk/config", sdk.ConfigView.as_view(), name="sdk-config"),
    path("api/v1/sdk/stream", sdk.stream, name="sdk-stream"),
    path("api/v1/outcomes", ingest.OutcomesView.as_view(), name="outcomes"),
    path("api/v1/feedback", ingest.FeedbackView.as_view(), name="feedback"),
    path("api/v1/metrics", ingest.MetricsView.as_view(), name="app-metrics"),
    path("api/v1/shadow-samples", shadow.ShadowSamplesView.as_view(), name="shadow-samples"),
    path("api/v1/judge-samples", judge.JudgeSamplesView.as_view(), name="judge-samples"),
    path("api/v1/plans", plan_api.PlansView.as_view(), name="plans"),
    path("api/v1/catalog/models", catalog.CatalogModelsView.as_view(), name="catalog-models"),
    path(
        "api/v1/catalog/connections", catalog.ConnectionsView.as_view(), name="catalog-connections"
    ),
    path("api/v1/alert-channels", catalog.AlertChannelsView.as_view(), name="alert-channels"),
    path("api/v1/templates", catalog.TemplatesView.as_view(), name="templates"),
    path("api/v1/guardrail-sets", catalog.GuardrailSetsView.as_view(), name="guardrail-sets"),
    path("api/v1/plans/<plan_key:key>", plan_api.PlanView.as_view(), name="plan-status"),
    # Before the plan actions' pattern, which would take them as actions.
    path(
        "api/v1/plans/<plan_key:key>/label-pairs",
        judge.LabelPairsView.as_view(),
        name="label-pairs",
    ),
    path("api/v1/plans/<plan_key:key>/labels", judge.LabelsView.as_view(), name="labels"),
    path("api/v1/plans/<plan_key:key>/replay", replay_api.ReplayView.as_view(), name="replay"),
    path(
        "api/v1/plans/<plan_key:key>/replay/cancel",
        replay_api.ReplayCancelView.as_view(),
        name="replay-cancel",
    ),
    path(
        "api/v1/plans/<plan_key:key>/<str:action>",
        plan_api.PlanActionView.as_view(),
        name="plan-action",
    ),
    path("api/v1/datasets", dataset_api.DatasetsView.as_view(), name="datasets"),
    path("api/v1/datasets/<plan_key:name>", dataset_api.DatasetView.as_view(), name="dataset"),
    path(
        "api/v1/datasets/<plan_key:name>/<plan_key:version>",
        dataset_api.DatasetVersionView.as_view(),
        name="dataset-version",
    ),
    path("metrics", metrics.metrics_view, name="metrics"),
    # The OpenAPI schema of every route here, and its interactive docs (api/openapi.py).
    path(
        "api/v1/schema",
        SpectacularAPIView.as_view(urlconf="migrations_app.api.openapi_urls"),
        name="schema",
    ),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    *decisions.urlpatterns,
]
