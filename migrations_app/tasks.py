"""Celery tasks: interfaces, not logic. Each takes JSON-safe arguments and calls one service.

Task names are explicit (``turnout.<verb>``) so a rename of a module never strands queued work.
Each capability keeps its tasks beside its services (``plans/tasks.py``, ``outcomes/tasks.py``,
``shadow/tasks.py``, ``judge/tasks.py``, ``guardrails/tasks.py``, ``alerts/tasks.py``,
``datasets/tasks.py``, ``replay/tasks.py``); this module only imports them, so that Celery's autodiscovery (which
looks for ``<app>.tasks``) registers every one.
"""

from __future__ import annotations

from migrations_app.alerts import tasks as alert_tasks
from migrations_app.datasets import tasks as dataset_tasks
from migrations_app.guardrails import tasks as engine_tasks
from migrations_app.judge import tasks as judge_tasks
from migrations_app.outcomes import tasks as outcome_tasks
from migrations_app.plans import tasks as plan_tasks
from migrations_app.replay import tasks as replay_tasks
from migrations_app.shadow import tasks as shadow_tasks

REGISTERED = (
    alert_tasks,
    dataset_tasks,
    engine_tasks,
    judge_tasks,
    outcome_tasks,
    plan_tasks,
    replay_tasks,
    shadow_tasks,
)
