"""The URLconf the OpenAPI schema is generated from: the project's API routes, each served by
the view that documents it (api/openapi.py). Never routed."""

from migrations_app import urls
from migrations_app.api.openapi import schema_patterns

urlpatterns = schema_patterns(urls.urlpatterns)
