"""A plan's per-request metrics: the answer checks, the catalog's declarations and its own (a
plan's own declaration of a name wins), read for ingest, the engine and the forms; and the
checks a declaration passes before it is saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Q
from turnout.contract import MAX_METRIC_BOUND

from migrations_app.models import MetricDefinition
from migrations_app.plans.metric_specs import CHECK_SPECS, MetricSpec


def spec_of(definition: MetricDefinition) -> MetricSpec:
    """A declaration as the statistics and the checks read it."""
    return _spec(*(getattr(definition, field.attname) for field in _SPEC_FIELDS))


#: A declaration's fields that make its spec, in :func:`_spec`'s order.
_SPEC_FIELDS = tuple(
    MetricDefinition._meta.get_field(name)
    for name in ("plan", "name", "kind", "direction", "lower_bound", "upper_bound", "description")
)


def _spec(
    plan_id: int | None,
    name: str,
    kind: str,
    direction: str,
    lower_bound: float | None,
    upper_bound: float | None,
    description: str,
) -> MetricSpec:
    mean = kind == "mean"
    # Within the contract's bounds whatever is stored: bounds written past the declaration's
    # checks (SQL, the ORM) would let in values whose squares overflow the sums.
    lower = float(lower_bound) if mean and lower_bound is not None else 0.0
    upper = float(upper_bound) if mean and upper_bound is not None else 1.0
    return MetricSpec(
        name=name,
        kind=kind,
        direction=direction,
        lower=min(max(lower, -MAX_METRIC_BOUND), MAX_METRIC_BOUND),
        upper=min(max(upper, -MAX_METRIC_BOUND), MAX_METRIC_BOUND),
        label=name.replace("_", " "),
        description=description,
        source="catalog" if plan_id is None else "plan",
    )


# Specs are frozen: ingest, which reads its batch's declarations every time, makes each once.
_remembered_spec = lru_cache(maxsize=4096)(_spec)


def specs_from(definitions: Iterable[MetricDefinition]) -> dict[str, MetricSpec]:
    """The answer checks, then the catalog's declarations, then the plan's own (which win)."""
    return _merged(spec_of(definition) for definition in definitions)


def _merged(specs: Iterable[MetricSpec]) -> dict[str, MetricSpec]:
    found = dict(CHECK_SPECS)
    for spec in sorted(specs, key=lambda s: s.source == "plan"):
        found[spec.name] = spec
    return found


def plan_metric_specs(plan_id: int | None) -> dict[str, MetricSpec]:
    """Every per-request metric plan ``plan_id`` may use (None: the checks and the catalog)."""
    scope = Q(plan__isnull=True) if plan_id is None else Q(plan__isnull=True) | Q(plan_id=plan_id)
    return specs_from(MetricDefinition.objects.filter(scope))


def specs_declaring(declarations: Iterable[MetricDefinition]) -> dict[str, MetricSpec]:
    """The metrics a plan may use if its own declarations were ``declarations`` (a plan
    document's, unsaved, which replace the saved ones): the checks, the catalog's, then
    these."""
    found = specs_from(MetricDefinition.objects.filter(plan__isnull=True))
    for definition in declarations:
        found[definition.name] = replace(spec_of(definition), source="plan")
    return found


def specs_by_plan(plan_ids: Iterable[int]) -> dict[int, dict[str, MetricSpec]]:
    """:func:`plan_metric_specs` for several plans in one query (ingest reads a batch's)."""
    ids = set(plan_ids)
    rows = _declarations(sorted(ids))
    return {pid: _merged(_remembered_spec(*r) for r in rows if r[0] in (None, pid)) for pid in ids}


def _declarations(ids: Sequence[int]) -> list[tuple[Any, ...]]:
    """The catalog's declarations and plans ``ids``' own, as tuples of :data:`_SPEC_FIELDS`.
    In SQL of its own: ingest reads them for every batch, and the ORM took 1.1 ms to make
    and run this query against 0.29 ms for the query itself."""
    qn = connection.ops.quote_name
    columns = ", ".join(qn(field.column) for field in _SPEC_FIELDS)
    plan = qn(_SPEC_FIELDS[0].column)
    where = f"{plan} IS NULL"
    if ids:
        where += f" OR {plan} IN ({', '.join(['%s'] * len(ids))})"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {qn(MetricDefinition._meta.db_table)} WHERE {where}", list(ids)
        )
        return list(cursor.fetchall())


def declarations_problems(
    declarations: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, list[str]], list[MetricDefinition]]:
    """Check metric declarations given as dicts (the API, plan files): errors keyed
    ``metrics[i].field``, and the unsaved definitions when there are none."""
    errors: dict[str, list[str]] = {}
    made: list[MetricDefinition] = []
    seen: set[str] = set()
    for i, item in enumerate(declarations):
        if not isinstance(item, Mapping):
            errors.setdefault(f"metrics[{i}]", []).append("An object with name, kind, ...")
            continue
        definition = MetricDefinition(
            name=item.get("name", ""),
            kind=item.get("kind", "rate"),
            direction=item.get("direction", "higher_is_better"),
            lower_bound=item.get("lower_bound"),
            upper_bound=item.get("upper_bound"),
            description=item.get("description", ""),
        )
        try:
            definition.full_clean(exclude=["plan"], validate_unique=False,
                                  validate_constraints=False)  # fmt: skip
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(f"metrics[{i}].{field}", []).extend(messages)
            continue
        if definition.name in seen:
            errors.setdefault(f"metrics[{i}].name", []).append("Declared twice.")
        seen.add(definition.name)
        made.append(definition)
    return errors, made
