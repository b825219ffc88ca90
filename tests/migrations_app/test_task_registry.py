"""Each capability keeps its tasks; ``migrations_app.tasks`` (what Celery's autodiscovery
imports) registers every one under its unchanged name, and beat schedules only those."""

from __future__ import annotations

from django.conf import settings

TASKS = {
    "turnout.import_prices": "migrations_app.plans.tasks",
    "turnout.purge_outcomes": "migrations_app.outcomes.tasks",
    "turnout.apply_held_feedback": "migrations_app.outcomes.tasks",
    "turnout.fold_pending": "migrations_app.outcomes.tasks",
    "turnout.evaluate_plans": "migrations_app.guardrails.tasks",
    "turnout.evaluate_plan": "migrations_app.guardrails.tasks",
    "turnout.watch_recovery": "migrations_app.guardrails.tasks",
    "turnout.run_shadow_samples": "migrations_app.shadow.tasks",
    "turnout.sweep_shadow": "migrations_app.shadow.tasks",
    "turnout.purge_shadow": "migrations_app.shadow.tasks",
    "turnout.run_judge_samples": "migrations_app.judge.tasks",
    "turnout.sweep_judge_samples": "migrations_app.judge.tasks",
    "turnout.purge_judge_samples": "migrations_app.judge.tasks",
    "turnout.deliver_alert": "migrations_app.alerts.tasks",
    "turnout.sweep_alerts": "migrations_app.alerts.tasks",
    "turnout.purge_datasets": "migrations_app.datasets.tasks",
    "turnout.run_replay_calls": "migrations_app.replay.tasks",
    "turnout.sweep_replays": "migrations_app.replay.tasks",
}

# What beat must run whatever the settings: the periodic sweeps and purges (import_prices only
# when a price map is mounted).
BEAT = {
    "turnout.evaluate_plans",
    "turnout.purge_outcomes",
    "turnout.apply_held_feedback",
    "turnout.fold_pending",
    "turnout.sweep_alerts",
    "turnout.sweep_shadow",
    "turnout.purge_shadow",
    "turnout.sweep_judge_samples",
    "turnout.purge_judge_samples",
    "turnout.purge_datasets",
    "turnout.sweep_replays",
}


def test_autodiscovery_registers_every_task_under_its_name() -> None:
    from controlplane.celery import app

    app.loader.import_default_modules()  # what a worker does: imports migrations_app.tasks
    registered = {name: task for name, task in app.tasks.items() if name.startswith("turnout.")}
    assert set(registered) == set(TASKS)
    for name, module in TASKS.items():
        assert registered[name].__module__ == module, name


def test_beat_schedules_registered_tasks_only() -> None:
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled <= set(TASKS)
    assert BEAT <= scheduled, BEAT - scheduled
