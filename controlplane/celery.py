"""The Celery app. Tasks are discovered from the installed apps; the schedule lives in settings."""

import logging
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

log = logging.getLogger(__name__)

app = Celery("turnout")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def import_provider_sdks(**_: Any) -> None:
    """Import the provider adapters (and their vendor SDKs) in the worker's main process, once,
    before the pool forks: each prefork child then starts with them in memory (shared pages)
    instead of spending a second or more of CPU importing them on its first task, while that
    task's calls wait."""
    from turnout.providers import provider_class

    from migrations_app.models import ProviderKind

    for kind in ProviderKind.values:
        try:
            provider_class(kind)
        except ImportError as exc:  # an SDK not installed: that vendor's calls fail as before
            log.info("provider %s: its SDK is not installed (%s)", kind, exc)
        except Exception as exc:  # a kind with no adapter: the call says so when made
            log.info("provider %s: no adapter (%s)", kind, exc)
