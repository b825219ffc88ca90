"""The decision endpoints' routes: part of the project's URLconf, and the whole URLconf of
the lean handler that serves them (controlplane/wsgi.py), which then resolves a request
against these four patterns instead of the admin's and the dashboard's."""

from django.urls import path

from migrations_app.api import ofrep, sdk

urlpatterns = [
    path("api/v1/ping", sdk.ping, name="ping"),
    path("api/v1/decide", sdk.decide, name="decide"),
    path("ofrep/v1/evaluate/flags", ofrep.evaluate_flags, name="ofrep-flags"),
    path("ofrep/v1/evaluate/flags/<str:key>", ofrep.evaluate_flag, name="ofrep-flag"),
]
