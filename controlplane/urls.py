from django.contrib import admin
from django.urls import include, path

# A body too large for Django on an API path: 413 in the API's error format.
handler400 = "migrations_app.api.errors.bad_request"
# A path no route takes, on an API path: 404 in the API's error format, not Django's HTML page.
handler404 = "migrations_app.api.errors.not_found"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("migrations_app.dashboard.urls")),
    path("", include("migrations_app.urls")),
]
