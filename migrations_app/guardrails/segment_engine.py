"""The engine's side of guardrails per segment (issue 16, item 6): read a stage's segments,
keep the busiest ``segment_top_k`` per dimension (the rest folded into ``other``), say which
segments the plan already excludes, and exclude a regressed one through
``plans/targeting.rule_add`` (audited, a routing change: its units go to control from the
next decision on). The statistics are guardrails/segments.py's (pure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from turnout.contract import MAX_RULES
from turnout.targeting import segment_value

from migrations_app.guardrails import segments as seg
from migrations_app.guardrails.stats import ArmAggregates
from migrations_app.models import MigrationPlan, PlanStage
from migrations_app.outcomes.segment_rollup import stage_segments
from migrations_app.plans import lifecycle
from migrations_app.plans import targeting as plan_targeting


def plan_segments(plan: MigrationPlan, stage: PlanStage) -> list[seg.Segment]:
    """The stage's segments as the evaluation tests them: per declared dimension its
    ``segment_top_k`` busiest values (both arms' requests) and ``other``."""
    dimensions = list(plan.segment_dimensions or [])[: seg.MAX_DIMENSIONS]
    stored = stage_segments(stage.pk)
    out: list[seg.Segment] = []
    for dimension in dimensions:
        per_value: dict[str, dict[str, ArmAggregates]] = {
            value: arms for (d, value), arms in stored.items() if d == dimension
        }
        counts = {v: sum(a.requests for a in arms.values()) for v, arms in per_value.items()}
        kept = seg.busiest(counts, plan.segment_top_k)
        folded = seg.fold(per_value, kept, _merge_arms)
        for value in sorted(folded, key=lambda v: (v == seg.OTHER, -counts.get(v, 0), v)):
            arms = folded[value]
            out.append(
                seg.Segment(
                    dimension,
                    value,
                    arms.get("control", ArmAggregates()),
                    arms.get("candidate", ArmAggregates()),
                )
            )
    return out


def _merge_arms(items: list[dict[str, ArmAggregates]]) -> dict[str, ArmAggregates]:
    out: dict[str, ArmAggregates] = {}
    for arm in ("control", "candidate"):
        parts = [i[arm] for i in items if arm in i]
        if parts:
            out[arm] = ArmAggregates.merge(parts)
    return out


def excluded_segments(plan: MigrationPlan) -> set[tuple[str, str]]:
    """The (dimension, value) pairs an exclusion rule of the plan already sends to control:
    rules of one condition, ``in`` one value or ``equals`` a value, resulting in exclude."""
    found: set[tuple[str, str]] = set()
    dimensions = set(plan.segment_dimensions or [])
    for rule in plan.targeting_rules.all():
        conditions = rule.conditions or []
        if rule.result != "exclude" or len(conditions) != 1:
            continue
        c = conditions[0]
        if not isinstance(c, Mapping) or c.get("attribute") not in dimensions:
            continue
        if c.get("op") == "in" and isinstance(c.get("values"), list) and len(c["values"]) == 1:
            value = segment_value(c["values"][0])
        elif c.get("op") == "equals":
            value = segment_value(c.get("value"))
        else:
            continue
        if value is not None:
            found.add((str(c["attribute"]), value))
    return found


def room_for(plan: MigrationPlan, exclusions: Sequence[tuple[str, str]]) -> bool:
    """Whether the exclusion rules of these segments fit in the plan's rule list (at most
    ``MAX_RULES``, as every rule list): where they do not, the segments roll back instead
    (an exclusion refused by the rule validation made every evaluation fail, and the
    regressed segment was never acted on)."""
    needed = sum(len(seg.exclusion_rules(d, v)) for d, v in exclusions)
    return not needed or plan.targeting_rules.count() + needed <= MAX_RULES


def exclude(plan: MigrationPlan, dimension: str, value: str, reason: str) -> dict[str, Any]:
    """Exclude a regressed segment: its rules go first (read before every other), so its
    units get control (reason EXCLUDED) and count in neither arm from the next decision on.
    Returns what the audit trail and the evaluation's evidence say about it."""
    rules = seg.exclusion_rules(dimension, value)
    for position, rule in enumerate(rules):
        plan_targeting.rule_add(
            plan_key=plan.key, rule=rule, actor=lifecycle.ENGINE, reason=reason, position=position
        )
    return {"dimension": dimension, "value": value, "rules": rules}
