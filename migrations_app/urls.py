from django.urls import path

from migrations_app import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
]
