"""A plan as a document: what the plans API answers in ``spec``, what ``plan export`` writes and
``plan apply`` reads back, and what changed between two of them.

One shape for a stored plan and for a checked one (``validation.ResolvedPlan``), so that
applying a file compares like with like: the same keys, numbers as JSON numbers, models as
``"provider:model_id"``, channels by name (their secrets never: a channel holds only the names
of the variables that hold them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from migrations_app.models import MigrationPlan
from migrations_app.plans.validation import (
    ARM_FIELDS,
    ARMS,
    GUARDRAIL_FIELDS,
    METRIC_FIELDS,
    MODEL_REFS,
    PHASE_FIELDS,
    SETTINGS,
    ResolvedPlan,
    model_ref,
)


def _json(value: Any) -> Any:
    """A column's value as JSON has it (a Decimal budget is a number)."""
    if isinstance(value, Decimal):
        return float(value)
    return value


def _number(value: Any) -> Any:
    """Whole floats as ints (a step of 25.0 is written 25), so that a file and its export
    read alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_number(v) for v in value]
    return value


def _rows(rows: Iterable[Mapping[str, Any]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{name: _number(_json(row.get(name))) for name in names} for row in rows]


def _document(
    columns: Mapping[str, Any],
    phases: Iterable[Mapping[str, Any]],
    guardrails: Iterable[Mapping[str, Any]],
    channels: Iterable[str],
    metrics: Iterable[Mapping[str, Any]],
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": columns["key"],
        "name": columns["name"],
        "description": columns["description"],
    }
    for arm in ARMS:
        doc[arm] = {
            "model": model_ref(columns[f"{arm}_model"]),
            **{f: _json(columns[f"{arm}_{f}"]) for f in ARM_FIELDS[1:]},
        }
    doc["phases"] = _rows(phases, PHASE_FIELDS)
    doc["metrics"] = _rows(sorted(metrics, key=lambda m: str(m["name"])), METRIC_FIELDS)
    doc["guardrails"] = _rows(guardrails, GUARDRAIL_FIELDS)
    doc["alert_channels"] = sorted(channels)
    for name in SETTINGS:
        doc[name] = _number(_json(columns[name]))
    for name in MODEL_REFS:
        doc[name] = model_ref(columns[name])
    return doc


def plan_document(plan: MigrationPlan) -> dict[str, Any]:
    """The stored plan as a document (a plan file applies it back unchanged)."""
    columns = {
        name: getattr(plan, name) for name in ("key", "name", "description", *SETTINGS, *MODEL_REFS)
    }
    for arm in ARMS:
        for f in ARM_FIELDS:
            columns[f"{arm}_{f}"] = getattr(plan, f"{arm}_{f}")
    phases = [{name: getattr(p, name) for name in PHASE_FIELDS} for p in plan.phases.all()]
    guardrails = [
        {name: getattr(g, name) for name in GUARDRAIL_FIELDS} for g in plan.guardrails.all()
    ]
    metrics = [
        {name: getattr(m, name) for name in METRIC_FIELDS} for m in plan.metric_definitions.all()
    ]
    return _document(
        columns, phases, guardrails, (c.name for c in plan.alert_channels.all()), metrics
    )


def resolved_document(resolved: ResolvedPlan) -> dict[str, Any]:
    """A checked plan as a document, to compare with the stored one."""
    return _document(
        resolved.columns,
        resolved.phases,
        resolved.guardrails,
        (c.name for c in resolved.alert_channels),
        resolved.metrics or [],
    )


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "from": self.before, "to": self.after}


def _same(a: Any, b: Any) -> bool:
    # 10 and 10.0 are one value (JSON has one number type); True and 1 are not.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def document_changes(before: Any, after: Any, path: str = "") -> list[Change]:
    """What differs from ``before`` to ``after``, as paths (``phases[2].steps``): a list of
    rows compares row by row, a list of values (steps, channels) as one value, an object key
    by key."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        found: list[Change] = []
        for key in list(before) + [k for k in after if k not in before]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in after or key not in before:
                found.append(Change(sub, before.get(key), after.get(key)))
            else:
                found.extend(document_changes(before[key], after[key], sub))
        return found
    rows = isinstance(before, list) and isinstance(after, list)
    if rows and all(isinstance(r, Mapping) for r in [*before, *after]) and (before or after):
        found = []
        for i in range(max(len(before), len(after))):
            if i >= len(before) or i >= len(after):
                found.append(
                    Change(
                        f"{path}[{i}]",
                        before[i] if i < len(before) else None,
                        after[i] if i < len(after) else None,
                    )
                )
            else:
                found.extend(document_changes(before[i], after[i], f"{path}[{i}]"))
        return found
    if isinstance(before, list) and isinstance(after, list):
        if len(before) == len(after) and all(map(_same, before, after)):
            return []
        return [Change(path, before, after)]
    return [] if _same(before, after) else [Change(path, before, after)]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, ``null`` removes a key (so it takes
    its default), anything else (lists included) replaces."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
