"""The plan document carries every plan setting the admin has (issues 15, 16, 20): the plan's
own metric declarations (and guardrails on them), the segment settings and the change
detectors' average run length. Each is written and read back as a document, round-trips
(applying the export changes nothing), and a bad value is refused by its path with nothing
stored."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from migrations_app.models import MetricDefinition, MigrationPlan
from migrations_app.plans.document import plan_document
from tests.api.test_plans_crud import _put, ci, document  # noqa: F401 (the fixture)
from tests.factories import started_plan

pytestmark = pytest.mark.django_db

TASK = {"name": "task_completed", "kind": "rate", "direction": "higher_is_better"}
CSAT = {
    "name": "csat",
    "kind": "mean",
    "direction": "higher_is_better",
    "lower_bound": 1,
    "upper_bound": 5,
    "description": "The user's 1-5 rating of the answer.",
}
GUARDS = [
    {"metric": "error_rate", "tolerance_kind": "relative", "tolerance": 1.5},
    {"metric": "task_completed", "tolerance_kind": "absolute", "tolerance": 0.02},
    {"metric": "csat", "tolerance_kind": "absolute", "tolerance": 0.1, "action": "pause"},
]
SETTINGS: dict[str, Any] = {
    "segment_dimensions": ["tenant", "lang"],
    "segment_top_k": 10,
    "segment_on_regression": "exclude",
    "detector_arl_days": 7,
}


def _refused(response: Any, field: str, words: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "validation_failed"
    messages = " ".join(body["details"]["fields"][field])
    assert words in messages, (field, body["details"]["fields"])


def test_metric_declarations_and_their_guardrails_round_trip(ci: Client) -> None:  # noqa: F811
    response = _put(ci, document(metrics=[CSAT, TASK], guardrails=GUARDS))
    assert response.status_code == 201, response.content
    spec = response.json()["plan"]["spec"]
    # Listed by name, every field given (a rate's bounds null).
    assert spec["metrics"] == [
        {**CSAT},
        {**TASK, "lower_bound": None, "upper_bound": None, "description": ""},
    ]
    assert [g["metric"] for g in spec["guardrails"]] == ["error_rate", "task_completed", "csat"]
    plan = MigrationPlan.objects.get(key="support-chat")
    stored = {d.name: d for d in MetricDefinition.objects.filter(plan=plan)}
    assert set(stored) == {"csat", "task_completed"}
    assert (stored["csat"].kind, stored["csat"].upper_bound) == ("mean", 5.0)
    assert plan_document(plan) == spec
    # apply(export(plan)) is a no-op, and so is the same declarations in another order.
    for again in (spec, document(metrics=[TASK, CSAT], guardrails=GUARDS)):
        answer = _put(ci, again)
        assert answer.status_code == 200 and answer.json()["changes"] == [], answer.content
    version = MigrationPlan.objects.get(key="support-chat").version
    assert version == plan.version


def test_a_changed_declaration_is_one_path_and_leaving_them_out_removes_them(
    ci: Client,  # noqa: F811
) -> None:
    assert _put(ci, document(metrics=[CSAT, TASK], guardrails=GUARDS)).status_code == 201
    wider = {**CSAT, "upper_bound": 10}
    answer = _put(ci, document(metrics=[wider, TASK], guardrails=GUARDS), query="?dry_run=true")
    assert answer.json()["changes"] == [{"path": "metrics[0].upper_bound", "from": 5, "to": 10}]
    assert _put(ci, document(metrics=[wider, TASK], guardrails=GUARDS)).status_code == 200
    plan = MigrationPlan.objects.get(key="support-chat")
    assert plan.metric_definitions.get(name="csat").upper_bound == 10.0
    # A document says what the plan is: without its declarations, their guardrails are refused,
    _refused(_put(ci, document(guardrails=GUARDS)), "guardrails[1].metric", "declares")
    # and without them either, the declarations go.
    answer = _put(ci, document(guardrails=GUARDS[:1]))
    assert answer.status_code == 200, answer.content
    assert {c["path"] for c in answer.json()["changes"]} >= {"metrics[0]", "metrics[1]"}
    assert not plan.metric_definitions.exists()


@pytest.mark.parametrize(
    ("metrics", "field", "words"),
    [
        ([{"name": "csat", "kind": "mean"}], "metrics[0].upper_bound", "needs both bounds"),
        ([{**CSAT, "lower_bound": 5, "upper_bound": 1}], "metrics[0].upper_bound", "above"),
        ([{**TASK, "lower_bound": 0}], "metrics[0].lower_bound", "leave its bounds empty"),
        ([{"name": "error_rate"}], "metrics[0].name", "built-in metric"),
        ([{"name": "schema_valid"}], "metrics[0].name", "built-in metric"),
        ([TASK, TASK], "metrics[1].name", "Declared twice"),
        ([{"name": "Task Completed"}], "metrics[0].name", "does not match"),
        ([{"name": "x" * 49}], "metrics[0].name", "no more than 48"),
        ([{**TASK, "kind": "median"}], "metrics[0].kind", "not a valid choice"),
        ([{**TASK, "direction": "sideways"}], "metrics[0].direction", "not a valid choice"),
        ([{**CSAT, "upper_bound": 1e13}], "metrics[0].upper_bound", "less than or equal"),
        ([{**TASK, "unit": "%"}], "metrics[0].unit", "Unknown field"),
        ([TASK] * 51, "metrics", "no more than 50"),
        ("task_completed", "metrics", "list"),
    ],
)
def test_bad_metric_declarations_are_refused_by_path(
    ci: Client,  # noqa: F811
    metrics: Any,
    field: str,
    words: str,
) -> None:
    _refused(_put(ci, document(metrics=metrics)), field, words)
    assert not MigrationPlan.objects.exists() and not MetricDefinition.objects.exists()


def test_metric_declarations_are_frozen_while_a_run_is_live(ci: Client) -> None:  # noqa: F811
    plan = started_plan("support-chat")
    spec = plan_document(plan)
    response = _put(ci, {**spec, "metrics": [TASK]})
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "illegal_transition"
    assert list(body["details"]["fields"]) == ["metrics[0]"]
    assert not MetricDefinition.objects.exists()
    # What a regressed segment does may change while the plan runs; what the run's tests may
    # spend may not (a new alpha, run length or family of segments would spend it again).
    answer = _put(ci, {**spec, "segment_on_regression": "exclude"})
    assert answer.status_code == 200, answer.content
    plan.refresh_from_db()
    assert plan.segment_on_regression == "exclude"


@pytest.mark.parametrize(
    "setting",
    [
        {"alpha": 0.2},
        {"detector_arl_days": 1},
        {"segment_top_k": 50},
        {"segment_dimensions": ["tenant"]},
        {"alpha": 0.1, "segment_top_k": 3},
    ],
)
def test_the_statistical_settings_are_frozen_while_a_run_is_live(
    ci: Client,  # noqa: F811
    setting: dict[str, Any],
) -> None:
    plan = started_plan("support-chat")
    before = plan_document(plan)
    response = _put(ci, {**before, **setting})
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "illegal_transition"
    assert sorted(body["details"]["fields"]) == sorted(setting)
    assert "what the run's tests may spend" in body["message"]
    plan.refresh_from_db()
    assert plan_document(plan) == before


def test_segment_settings_and_the_detectors_run_length_round_trip(ci: Client) -> None:  # noqa: F811
    response = _put(ci, document(**SETTINGS))
    assert response.status_code == 201, response.content
    spec = response.json()["plan"]["spec"]
    assert {name: spec[name] for name in SETTINGS} == SETTINGS
    plan = MigrationPlan.objects.get(key="support-chat")
    assert plan.segment_dimensions == ["tenant", "lang"]
    assert (plan.segment_top_k, plan.segment_on_regression) == (10, "exclude")
    assert plan.detector_arl_days == 7.0
    assert _put(ci, spec).json()["changes"] == []
    # Defaults when left out, and a PATCH changes one of them alone.
    bare = _put(ci, document(key="bare")).json()["plan"]["spec"]
    assert {name: bare[name] for name in SETTINGS} == {
        "segment_dimensions": [],
        "segment_top_k": 20,
        "segment_on_regression": "rollback",
        "detector_arl_days": 30,
    }
    patched = ci.patch(
        "/api/v1/plans/support-chat", {"detector_arl_days": 1.5}, content_type="application/json"
    )
    assert patched.status_code == 200, patched.content
    assert patched.json()["changes"] == [{"path": "detector_arl_days", "from": 7, "to": 1.5}]


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        ({"segment_dimensions": ["a", "b", "c", "d"]}, "segment_dimensions", "no more than 3"),
        ({"segment_dimensions": ["tenant", "tenant"]}, "segment_dimensions", "once"),
        ({"segment_dimensions": ["9lives"]}, "segment_dimensions[0]", "does not match"),
        ({"segment_dimensions": "tenant"}, "segment_dimensions", "list"),
        ({"segment_top_k": 0}, "segment_top_k", "greater than or equal to 1"),
        ({"segment_top_k": 51}, "segment_top_k", "less than or equal to 50"),
        ({"segment_on_regression": "ignore"}, "segment_on_regression", "not a valid choice"),
        ({"detector_arl_days": 0.5}, "detector_arl_days", "greater than or equal to 1"),
        ({"detector_arl_days": 366}, "detector_arl_days", "less than or equal to 365"),
        ({"detector_arl_days": None}, "detector_arl_days", "may not be null"),
        ({"detector_arl_days": "a month"}, "detector_arl_days", "valid number"),
        ({"holdout_percent": 0.3}, "holdout_percent", "0 for no holdout"),
        ({"holdout_percent": 25}, "holdout_percent", "less than or equal to 20"),
        ({"holdout_percent": -1}, "holdout_percent", "greater than or equal to 0"),
        ({"holdout_watch_minutes": 0}, "holdout_watch_minutes", "greater than or equal to 1"),
        ({"holdout_watch_minutes": 43_201}, "holdout_watch_minutes", "less than or equal"),
        ({"holdout_min_samples": -5}, "holdout_min_samples", "greater than or equal to 0"),
        (
            {"holdout_percent": 2, "phases": [{"kind": "ab_split", "percent": 50}]},
            "holdout_percent",
            "100",
        ),
    ],
)
def test_bad_settings_are_refused_by_path(
    ci: Client,  # noqa: F811
    settings: dict[str, Any],
    field: str,
    words: str,
) -> None:
    _refused(_put(ci, document(**settings)), field, words)
    assert not MigrationPlan.objects.exists()


HOLDOUT = {"holdout_percent": 2, "holdout_watch_minutes": 120, "holdout_min_samples": 5000}


def test_the_holdout_settings_round_trip_and_are_frozen_while_running(
    ci: Client,  # noqa: F811
) -> None:
    response = _put(ci, document(**HOLDOUT))
    assert response.status_code == 201, response.content
    spec = response.json()["plan"]["spec"]
    assert {name: spec[name] for name in HOLDOUT} == HOLDOUT
    plan = MigrationPlan.objects.get(key="support-chat")
    assert (plan.holdout_percent, plan.holdout_watch_minutes, plan.holdout_min_samples) == (
        2.0, 120, 5000,
    )  # fmt: skip
    assert _put(ci, spec).json()["changes"] == []
    bare = _put(ci, document(key="bare")).json()["plan"]["spec"]
    assert {name: bare[name] for name in HOLDOUT} == {
        "holdout_percent": 0,
        "holdout_watch_minutes": 60,
        "holdout_min_samples": 1000,
    }
    running = plan_document(started_plan("running-chat"))
    response = _put(ci, {**running, "holdout_percent": 5})
    assert response.status_code == 409, response.content
    assert list(response.json()["details"]["fields"]) == ["holdout_percent"]


COHORT_FIRST = [
    {"kind": "shadow", "percent": 10},
    {
        "kind": "rollout",
        "steps": [
            {"cohort": "internal", "percent": 100},
            {"cohort": "beta", "percent": 50},
            5,
            100,
        ],
    },
]


def test_cohort_steps_round_trip(ci: Client) -> None:  # noqa: F811
    response = _put(ci, document(phases=COHORT_FIRST))
    assert response.status_code == 201, response.content
    spec = response.json()["plan"]["spec"]
    assert spec["phases"][1]["steps"] == COHORT_FIRST[1]["steps"]
    assert _put(ci, spec).json()["changes"] == []
    changed = [*COHORT_FIRST[1]["steps"][:1], {"cohort": "beta", "percent": 25}, 5, 100]
    answer = _put(
        ci, {**spec, "phases": [spec["phases"][0], {**spec["phases"][1], "steps": changed}]}
    )
    assert answer.status_code == 200, answer.content
    assert [c["path"] for c in answer.json()["changes"]] == ["phases[1].steps"]


@pytest.mark.parametrize(
    ("step", "words"),
    [
        ({"cohort": "Internal Users", "percent": 100}, "lowercase"),
        ({"cohort": "internal"}, "cohort step such as"),
        ({"cohort": "internal", "percent": 100, "extra": 1}, "cohort step such as"),
        ({"cohort": "internal", "percent": True}, "cohort step such as"),
        ("fifty", "cohort step such as"),
        (True, "cohort step such as"),
        (150, "cohort step such as"),
    ],
)
def test_bad_cohort_steps_are_refused_by_path(ci: Client, step: Any, words: str) -> None:  # noqa: F811
    phases = [COHORT_FIRST[0], {"kind": "rollout", "steps": [step, 100]}]
    _refused(_put(ci, document(phases=phases)), "phases[1].steps[0]", words)
    assert not MigrationPlan.objects.exists()
