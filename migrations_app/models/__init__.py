"""Turnout's models, one module per capability, all in the one Django app ``migrations_app``:
catalog (provider connections, models), plans (plans, phases, guardrails, runs, stages, the
audit trail), alerts (channels, the outbox), keys (SDK API keys), outcomes (raw outcomes and
feedback, their aggregates), guardrails (the engine's evaluations), shadow (samples and their
paired aggregate), routing (the routing-change sequence), metrics (declared per-request
metrics, late values, per-unit sums), judge (people's labels on pairs, the pointwise judge's
samples, the judge's daily spend), datasets (replay datasets and their items), replay (replay runs, their calls and item results).

Everything is re-exported here: ``from migrations_app.models import MigrationPlan`` works, and
Django finds every model through this module. No schema change came with the split: each
model keeps its app label and table.
"""

from __future__ import annotations

from migrations_app.models.alerts import (
    AlertAttempt,
    AlertChannel,
    AlertChannelKind,
    AlertDelivery,
    DeliveryStatus,
)
from migrations_app.models.catalog import (
    ENV_VAR_NAME,
    MODEL_ID,
    ModelSpec,
    ProviderConnection,
    ProviderKind,
)
from migrations_app.models.datasets import (
    DATASET_NAME,
    Dataset,
    DatasetItem,
    DatasetSource,
)
from migrations_app.models.guardrails import (
    Evaluation,
)
from migrations_app.models.judge import (
    JudgeLabel,
    JudgeSample,
    JudgeSpend,
    LabelChoice,
)
from migrations_app.models.keys import (
    ApiKey,
    ApiKeyScope,
)
from migrations_app.models.metrics import (
    RESERVED_METRIC_NAMES,
    MetricDefinition,
    MetricDirection,
    MetricKind,
    MetricUnitTotals,
    MetricValue,
)
from migrations_app.models.outcomes import (
    Arm,
    Fallback,
    Feedback,
    FeedbackScale,
    Outcome,
    PendingRollup,
    PendingSegments,
    SegmentAggregate,
    StageAggregate,
    Uncounted,
    UnitTotals,
    WindowAggregate,
)
from migrations_app.models.plans import (
    PLAN_KEY,
    ActorKind,
    AuditAction,
    AuditEvent,
    Guardrail,
    GuardrailAction,
    GuardrailMetric,
    GuardrailSet,
    MigrationPlan,
    PhaseKind,
    PlanPhase,
    PlanRun,
    PlanStage,
    PlanStatus,
    PlanTemplate,
    PromptMode,
    StageKind,
    ToleranceKind,
    new_salt,
)
from migrations_app.models.replay import (
    ReplayCall,
    ReplayCallStatus,
    ReplayItem,
    ReplayRun,
    ReplayStatus,
)
from migrations_app.models.routing import (
    OverrideArm,
    RoutingState,
    RuleResult,
    TargetingRule,
    UnitOverride,
)
from migrations_app.models.shadow import (
    ShadowAggregate,
    ShadowSample,
    ShadowStatus,
)

__all__ = [
    "DATASET_NAME",
    "Dataset",
    "DatasetItem",
    "DatasetSource",
    "JudgeLabel",
    "JudgeSample",
    "JudgeSpend",
    "LabelChoice",
    "AuditAction",
    "StageKind",
    "ActorKind",
    "AlertAttempt",
    "AlertChannel",
    "AlertChannelKind",
    "AlertDelivery",
    "ApiKey",
    "ApiKeyScope",
    "Arm",
    "AuditEvent",
    "DeliveryStatus",
    "ENV_VAR_NAME",
    "Evaluation",
    "Fallback",
    "Uncounted",
    "Feedback",
    "FeedbackScale",
    "Guardrail",
    "GuardrailAction",
    "GuardrailMetric",
    "GuardrailSet",
    "MODEL_ID",
    "MetricDefinition",
    "MetricDirection",
    "MetricKind",
    "MetricUnitTotals",
    "MetricValue",
    "RESERVED_METRIC_NAMES",
    "MigrationPlan",
    "ModelSpec",
    "Outcome",
    "PendingRollup",
    "PendingSegments",
    "PLAN_KEY",
    "PhaseKind",
    "PlanPhase",
    "PlanRun",
    "PlanStage",
    "PlanStatus",
    "PlanTemplate",
    "PromptMode",
    "ProviderConnection",
    "ProviderKind",
    "ReplayCall",
    "ReplayCallStatus",
    "ReplayItem",
    "ReplayRun",
    "ReplayStatus",
    "RoutingState",
    "OverrideArm",
    "RuleResult",
    "TargetingRule",
    "UnitOverride",
    "ShadowAggregate",
    "ShadowSample",
    "ShadowStatus",
    "SegmentAggregate",
    "StageAggregate",
    "ToleranceKind",
    "UnitTotals",
    "WindowAggregate",
    "new_salt",
]
