"""Dataset tasks: the retention purge."""

from __future__ import annotations

from celery import shared_task

from migrations_app.datasets.retention import dataset_purge


@shared_task(name="turnout.purge_datasets", soft_time_limit=600, time_limit=660)
def purge_datasets() -> int:
    """Delete datasets past their retention that no replay uses."""
    return dataset_purge()
