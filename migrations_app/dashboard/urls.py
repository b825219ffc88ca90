from django.urls import path

from migrations_app.dashboard import views

urlpatterns = [
    path("plans/<str:key>/", views.plan_dashboard, name="plan-dashboard"),
    path("plans/<str:key>/live", views.plan_live, name="plan-live"),
    path("plans/<str:key>/act/<str:action>", views.plan_act, name="plan-act"),
    path("plans/<str:key>/report", views.plan_report, name="plan-report"),
]
