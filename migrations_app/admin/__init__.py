"""The admin, one module per capability: catalog (provider connections, models), plans (plans
with their phases, guardrails and audit trail), alerts (channels, deliveries), keys (SDK API
keys), datasets (replay datasets: upload, draw from shadow samples, pin, delete); forms.py
holds what several pages share. Importing this package registers every page (Django's admin
autodiscovery imports ``migrations_app.admin``).
"""

from django.contrib import admin

from migrations_app.admin import alerts, catalog, datasets, keys, metrics, plans, targeting

REGISTERED = (alerts, catalog, datasets, keys, metrics, plans, targeting)

# The product's name on every admin page, not "Django administration" (templates/admin/base_site.html).
admin.site.site_header = "Turnout"
admin.site.site_title = "Turnout"
admin.site.index_title = "Plans, models, alerts and API keys"
