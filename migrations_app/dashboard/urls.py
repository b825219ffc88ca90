from django.urls import path

from migrations_app import converters  # noqa: F401  (registers <plan_key:...>)
from migrations_app.dashboard import judge_page, replay_page, views

urlpatterns = [
    path("", views.home, name="home"),
    # No trailing slash: "plans/<key>/" is a plan's dashboard (a plan may be keyed "new").
    path("plans/new", views.plan_new, name="plan-new"),
    path("plans/new/preview", views.plan_new_preview, name="plan-new-preview"),
    path("plans/<plan_key:key>/", views.plan_dashboard, name="plan-dashboard"),
    path("plans/<plan_key:key>/live", views.plan_live, name="plan-live"),
    path("plans/<plan_key:key>/act/<str:action>", views.plan_act, name="plan-act"),
    path("plans/<plan_key:key>/report", views.plan_report, name="plan-report"),
    path("plans/<plan_key:key>/judge", judge_page.plan_judge, name="plan-judge"),
    path("plans/<plan_key:key>/replay", replay_page.plan_replay, name="plan-replay"),
]
