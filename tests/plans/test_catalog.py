# ruff: noqa: F811  (the simulator fixtures are imported by name, as pytest finds them)
"""The seeded catalog and the community price-map import."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import reverse
from turnout import routing
from turnout.providers import Adapters, ProviderError

from migrations_app.models import (
    MigrationPlan,
    ModelSpec,
    ProviderConnection,
    ShadowSample,
    ShadowStatus,
)
from migrations_app.routing import snapshots
from migrations_app.secret_policy import parse_host_rules
from migrations_app.shadow import calls, pipeline
from migrations_app.shadow.judge import compare_answers
from migrations_app.simulator import Simulator
from tests.factories import make_plan
from tests.providers.conftest import sim, simulator  # noqa: F401
from tests.shadow.test_shadow import ingest, same, sample, shadow_plan

pytestmark = pytest.mark.django_db
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "price_map.json"


def _spec(model_id: str) -> ModelSpec:
    return ModelSpec.objects.get(model_id=model_id)


def test_seed_has_the_common_models() -> None:
    gpt4o = _spec("gpt-4o-2024-08-06")
    assert (gpt4o.input_price_per_mtok, gpt4o.output_price_per_mtok, gpt4o.context_window) == (
        Decimal("2.5"),
        Decimal("10"),
        128_000,
    )
    assert _spec("gemini-1.5-pro-002").context_window == 2_000_000
    assert ModelSpec.objects.count() == 12


def test_import_updates_prices_reports_malformed_and_leaves_plans_alone() -> None:
    plan = make_plan("priced")
    plan_before = MigrationPlan.objects.filter(pk=plan.pk).values().get()
    sonnet_before = _spec("claude-sonnet-4-20250514").input_price_per_mtok
    gemini_before = _spec("gemini-2.0-flash-001").output_price_per_mtok
    out, err = io.StringIO(), io.StringIO()
    call_command("import_prices", str(FIXTURE), stdout=out, stderr=err)
    assert _spec("gpt-4o-mini-2024-07-18").input_price_per_mtok == Decimal("0.12")
    assert _spec("gpt-4o-mini-2024-07-18").output_price_per_mtok == Decimal("0.48")
    haiku = _spec("claude-3-5-haiku-20241022")
    assert (haiku.input_price_per_mtok, haiku.output_price_per_mtok) == (Decimal("1"), Decimal("5"))
    # Malformed entries are named and skipped; their models keep their prices.
    assert (
        "skipped claude-sonnet-4-20250514: input_cost_per_token must be a non-negative number"
        in err.getvalue()
    )
    assert "skipped gemini-2.0-flash-001: missing input_cost_per_token" in err.getvalue()
    assert _spec("claude-sonnet-4-20250514").input_price_per_mtok == sonnet_before
    assert _spec("gemini-2.0-flash-001").output_price_per_mtok == gemini_before
    assert "2 updated, 1 unchanged, 1 not in the catalog, 2 malformed" in out.getvalue()
    assert MigrationPlan.objects.filter(pk=plan.pk).values().get() == plan_before


def test_import_rejects_a_file_that_is_not_a_price_map(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(CommandError, match="must be a JSON object"):
        call_command("import_prices", str(bad))
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_prices", str(bad))


# --- what a connection may name (issue 14, item 4): refused when saved --------------------

CONNECTION_ADD = "admin:migrations_app_providerconnection_add"


def _connection_post(**fields: str) -> dict[str, str]:
    data = {
        "name": "evil",
        "kind": "openai_compatible",
        "base_url": "http://127.0.0.1:8999/v1",
        "api_key_env": "VLLM_API_KEY",
        "max_concurrent_calls": "4",
        "max_calls_per_second": "",
    }
    data.update(fields)
    return data


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("api_key_env", "SECRET_KEY", "one of Turnout&#x27;s own settings"),
        ("api_key_env", "DATABASE_URL", "one of Turnout&#x27;s own settings"),
        ("api_key_env", "AWS_SECRET_ACCESS_KEY", "TURNOUT_PROVIDER_KEY_VARS allows *_API_KEY"),
        (
            "base_url",
            "https://attacker.example/v1",
            "attacker.example is not in TURNOUT_PROVIDER_HOSTS",
        ),
        ("base_url", "http://169.254.169.254/latest", "never allowed"),
        ("base_url", "http://metadata.google.internal/v1", "never allowed"),
        ("base_url", "http://2852039166/v1", "Enter a valid URL"),  # the form's own check
        ("base_url", "http://[::ffff:169.254.169.254]/v1", "never allowed"),
        ("base_url", "http://api.openai.com@attacker.example/v1", "user name or password"),
        ("base_url", "ftp://api.openai.com/v1", "http:// or https://"),
    ],
)
def test_the_admin_refuses_a_connection_that_could_send_a_secret_elsewhere(
    admin_client: Client, field: str, value: str, message: str
) -> None:
    response = admin_client.post(reverse(CONNECTION_ADD), _connection_post(**{field: value}))
    assert response.status_code == 200  # the form again, with the error on the field
    errors = response.context["adminform"].form.errors
    assert list(errors) == [field], errors
    assert message in response.content.decode()
    assert not ProviderConnection.objects.filter(name="evil").exists()


def test_the_admin_saves_an_allowed_connection(admin_client: Client) -> None:
    response = admin_client.post(reverse(CONNECTION_ADD), _connection_post())
    assert response.status_code == 302
    assert ProviderConnection.objects.get(name="evil").base_url == "http://127.0.0.1:8999/v1"


def test_editing_a_seeded_connection_to_point_elsewhere_is_refused(admin_client: Client) -> None:
    openai = ProviderConnection.objects.get(name="openai")
    url = reverse("admin:migrations_app_providerconnection_change", args=[openai.pk])
    data = _connection_post(
        name="openai", kind="openai", base_url="https://attacker.example/v1",
        api_key_env="OPENAI_API_KEY",
    )  # fmt: skip
    assert admin_client.post(url, data).status_code == 200
    openai.refresh_from_db()
    assert openai.base_url == ""


def test_model_validation_refuses_it_for_any_other_writer() -> None:
    row = ProviderConnection(
        name="evil", kind="openai", base_url="http://[fd00:ec2::254]/", api_key_env="SECRET_KEY"
    )
    with pytest.raises(ValidationError) as caught:
        row.full_clean()
    assert set(caught.value.message_dict) == {"base_url", "api_key_env"}


def test_the_seeded_connections_are_allowed() -> None:
    for row in ProviderConnection.objects.all():
        row.full_clean()


@override_settings(
    TURNOUT_PROVIDER_KEY_VARS=("*",),
    TURNOUT_PROVIDER_HOST_RULES=parse_host_rules("H", ["*"]),
)
def test_widened_settings_still_refuse_turnouts_secrets_and_metadata() -> None:
    ProviderConnection(
        name="ok", kind="openai", base_url="https://x.example/v1", api_key_env="ANY"
    ).full_clean()
    for fields in (
        {"api_key_env": "TURNOUT_METRICS_TOKEN"},
        {"api_key_env": "REDIS_URL"},
        {"base_url": "http://169.254.169.254/"},
        {"base_url": "http://10.0.0.1/"},
    ):
        row = ProviderConnection(
            **{"name": "bad", "kind": "openai", "base_url": "", "api_key_env": "K", **fields}
        )
        with pytest.raises(ValidationError):
            row.full_clean()


# --- ... and refused when used: a row saved before the rule, or before it was narrowed ----

CANDIDATE = "claude-sonnet-4-20250514"
NO_LOOPBACK = parse_host_rules("TURNOUT_PROVIDER_HOSTS", ["api.anthropic.com"])


def _point_candidate_at(sim: Simulator, monkeypatch: pytest.MonkeyPatch, **fields: str) -> None:
    """As a row written before this rule: a queryset update skips model validation."""
    ProviderConnection.objects.filter(name="anthropic").update(base_url=sim.url, **fields)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("SECRET_KEY", "the-django-secret-key")
    monkeypatch.setattr(calls, "_adapters", Adapters())


def _candidate_arm() -> dict[str, object]:
    [entry] = snapshots.build_snapshot()["plans"]
    return entry["candidate"]


@pytest.mark.parametrize(
    ("fields", "settings_override"),
    [
        ({"api_key_env": "SECRET_KEY"}, {}),  # saved before the rule existed
        ({}, {"TURNOUT_PROVIDER_HOST_RULES": NO_LOOPBACK}),  # the operator narrowed the hosts
        ({}, {"TURNOUT_PROVIDER_KEY_VARS": ("OPENAI_*",)}),  # ... or the key variables
    ],
)
def test_the_shadow_worker_does_not_call_a_connection_no_longer_allowed(
    sim: Simulator,
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, str],
    settings_override: dict[str, object],
) -> None:
    plan = shadow_plan()  # started while allowed (a start refuses a refused connection)
    _point_candidate_at(sim, monkeypatch, **fields)
    event = sample(plan)
    ingest(event)
    with override_settings(**settings_override):
        counts = pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=same)
    assert counts["done"] == 0 and counts["skipped"] == 1, counts
    assert sim.stats()["models"].get(CANDIDATE, {}).get("requests", 0) == 0
    stored = ShadowSample.objects.get(pk=event["id"])
    assert stored.status == ShadowStatus.SKIPPED
    assert stored.skip_reason.startswith("provider anthropic refused: ")


def test_the_judge_is_not_called_through_a_refused_connection(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    judge = ModelSpec.objects.get(model_id="gpt-4o-2024-08-06")
    plan = shadow_plan(judge_model=judge)
    ProviderConnection.objects.filter(name="openai").update(
        base_url=f"{sim.url}/v1", api_key_env="SECRET_KEY"
    )
    _point_candidate_at(sim, monkeypatch)
    event = sample(plan)
    ingest(event)
    pipeline.shadow_run([event["id"]], call=calls.provider_call, compare=compare_answers)
    stored = ShadowSample.objects.get(pk=event["id"])
    assert stored.status == ShadowStatus.DONE  # the candidate answered; the judge was refused
    assert stored.comparison["judge"]["error"] == "not_called"
    assert sim.stats()["models"].get(judge.model_id, {}).get("requests", 0) == 0


@pytest.mark.parametrize(
    ("fields", "settings_override", "leak"),
    [
        ({"api_key_env": "SECRET_KEY"}, {}, "SECRET_KEY"),
        ({"base_url": "https://attacker.example/v1"}, {}, "attacker.example"),
        ({"base_url": "http://169.254.169.254/"}, {}, "169.254.169.254"),
        (
            {"base_url": "http://127.0.0.1:9/v1"},
            {"TURNOUT_PROVIDER_HOST_RULES": NO_LOOPBACK},
            "127.0.0.1",
        ),
    ],
)
def test_the_snapshot_gives_sdks_no_refused_connection(
    fields: dict[str, str], settings_override: dict[str, object], leak: str
) -> None:
    """Every application process using complete() reads its arms from the snapshot: a refused
    connection reaches them as an arm no adapter serves, without its URL or key variable."""
    make_plan()
    ProviderConnection.objects.filter(name="anthropic").update(**fields)
    with override_settings(**settings_override):
        snapshot = snapshots.build_snapshot()
    [entry] = snapshot["plans"]
    arm = entry["candidate"]
    assert (arm["kind"], arm["base_url"], arm["api_key_env"]) == ("refused", "", "")
    assert leak not in json.dumps(snapshot)
    assert entry["control"]["kind"] == "openai"  # the other arm is untouched
    spec = routing.parse_plan(entry).candidate
    with pytest.raises(ProviderError) as caught:
        Adapters().get(spec)
    assert not caught.value.transient


@pytest.mark.parametrize(
    "model_id",
    ["../../v1beta/files", "gpt-4o?key=x", "gpt 4o", "models/x#y", "a\\b", "x/../y", "", "%2e%2e"],
)
def test_a_model_id_cannot_step_out_of_the_vendors_model_path(model_id: str) -> None:
    """Gemini puts the model id in the request path: an id is a name, never a path or query."""
    spec = ModelSpec(
        provider=ProviderConnection.objects.get(name="gemini"), model_id=model_id,
        input_price_per_mtok=1, output_price_per_mtok=1, context_window=10, max_output_tokens=10,
    )  # fmt: skip
    with pytest.raises(ValidationError) as caught:
        spec.full_clean()
    assert "model_id" in caught.value.message_dict


@pytest.mark.parametrize(
    "model_id",
    ["ft:gpt-4o-mini-2024-07-18:acme::abc123", "llama3.1:8b", "Qwen/Qwen2.5-7B-Instruct",
     "anthropic.claude-3-5-sonnet-20240620-v1:0", "models/gemini-2.0-flash@001"],
)  # fmt: skip
def test_real_model_ids_are_accepted(model_id: str) -> None:
    ModelSpec(
        provider=ProviderConnection.objects.get(name="gemini"), model_id=model_id,
        input_price_per_mtok=1, output_price_per_mtok=1, context_window=10, max_output_tokens=10,
    ).full_clean()  # fmt: skip
    for spec in ModelSpec.objects.all():
        spec.full_clean()


def test_the_connection_list_says_which_connections_are_refused(admin_client: Client) -> None:
    ProviderConnection.objects.filter(name="anthropic").update(
        base_url="http://169.254.169.254/", api_key_env="SECRET_KEY"
    )
    page = admin_client.get(reverse("admin:migrations_app_providerconnection_changelist"))
    html = page.content.decode().replace("&#x27;", "'")
    assert "refused: api_key_env: SECRET_KEY is one of Turnout's own settings" in html
    assert "169.254.169.254 is a link-local, metadata or reserved address" in html
    assert html.count("refused: ") == 1  # the seeded others are allowed
