"""Guardrails: the statistics (stats/, pure, one module per test), the plan-level rules that turn
the guardrails' verdicts into one decision (rules.py, pure), and the rollback engine that
evaluates running plans and acts through the lifecycle services (engine.py, tasks.py)."""
