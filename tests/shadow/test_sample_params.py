"""A shadow sample's params: only sampling controls, per candidate kind, checked at ingest
with the field and a stable code (turnout.providers.params is the one list, SDK and server)."""

from __future__ import annotations

import pytest
from turnout.providers.params import NOT_ALLOWED, sample_param_problems, sample_params

from migrations_app.models import ShadowSample
from tests.shadow.test_shadow import ingest, sample, shadow_plan


@pytest.mark.parametrize(
    "name, value",
    [
        ("timeout", 1),
        ("n", 8),
        ("max_completion_tokens", 100_000),
        ("max_output_tokens", 100_000),
        ("stream", True),
        ("model", "claude-opus-4"),
        ("messages", []),
        ("extra_headers", {"x": "y"}),
        ("extra_body", {"max_tokens": 100_000}),
        ("base_url", "http://169.254.169.254"),
        ("api", "responses"),
        ("tools", []),
    ],
)
@pytest.mark.django_db
def test_params_that_change_the_call_or_its_cost_are_refused_at_ingest(name, value):
    plan = shadow_plan()
    event = sample(plan)
    event["request"]["params"] = {"temperature": 0.3, name: value}
    result = ingest(event, sample(plan))
    assert result.stored == 1
    [rejected] = result.rejected
    assert (rejected.index, rejected.field, rejected.code) == (
        0,
        f"request.params.{name}",
        NOT_ALLOWED,
    )
    assert not ShadowSample.objects.filter(pk=event["id"]).exists()


@pytest.mark.parametrize(
    "params, field",
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 1.5}, "temperature"),  # Anthropic's range is 0 to 1
        ({"top_p": -0.1}, "top_p"),
        ({"top_k": 2.5}, "top_k"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"seed": 1}, "seed"),  # Anthropic takes no seed
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": 131_073}, "max_tokens"),  # over MAX_SAMPLE_MAX_TOKENS
    ],
)
@pytest.mark.django_db
def test_values_are_checked_for_the_candidates_kind(params, field):
    plan = shadow_plan()  # the candidate is Claude (kind anthropic)
    event = sample(plan)
    event["request"]["params"] = params
    [rejected] = ingest(event).rejected
    assert rejected.field == f"request.params.{field}"
    assert rejected.code in ("invalid", NOT_ALLOWED)


@pytest.mark.django_db
def test_sampling_controls_are_stored_as_sent():
    plan = shadow_plan()
    event = sample(plan)
    event["request"]["params"] = {
        "temperature": 0.7, "top_p": 0.9, "top_k": 40, "stop": ["\n"], "max_tokens": 300
    }  # fmt: skip
    assert ingest(event).stored == 1
    stored = ShadowSample.objects.get(pk=event["id"])
    assert stored.request["params"] == event["request"]["params"]


def test_each_kind_has_its_own_list():
    assert sample_param_problems("openai", {}, {"seed": 7, "presence_penalty": 0.5}) == []
    assert [p[0] for p in sample_param_problems("openai", {"api": "responses"}, {"stop": "x"})] == [
        "stop"
    ]
    assert [p[0] for p in sample_param_problems("unknown-kind", {}, {"temperature": 0.1})] == [
        "temperature"
    ]
    kept, left_out = sample_params(
        "anthropic", {}, {"temperature": 0.3, "timeout": 1, "max_tokens": 9, "top_p": 7}
    )
    assert kept == {"temperature": 0.3, "max_tokens": 9} and left_out == ["timeout", "top_p"]
