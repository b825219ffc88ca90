"""The Celery app. Tasks are discovered from the installed apps; the schedule lives in settings."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("turnout")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
