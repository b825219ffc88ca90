"""Plan files against the real API: ``python -m turnout plan export|apply|diff|list`` (the SDK's
CLI, its HTTP calls served by this server in process), the round trip export -> apply to a fresh
install -> export, apply twice a no-op, and the shipped JSON Schema is the serializer's."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from django.core.management import call_command
from django.test import Client
from turnout import cli, plan_files

from migrations_app.api.keys import apikey_create
from migrations_app.api.plan_schema import SDK_SCHEMA, schema_text
from migrations_app.models import AlertChannel, AuditEvent, MigrationPlan
from tests.conftest import ROOT
from tests.factories import make_plan

pytestmark = pytest.mark.django_db


def _transport(client: Client) -> httpx.MockTransport:
    """httpx requests answered by Django's test client: the CLI talks to this very server."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        headers = {"HTTP_AUTHORIZATION": request.headers.get("authorization", "")}
        body = request.content
        kwargs: dict[str, Any] = {"content_type": "application/json"} if body else {}
        response = client.generic(request.method, path, body, **kwargs, **headers)
        return httpx.Response(
            response.status_code,
            content=response.content,
            headers={"content-type": response.get("Content-Type", "application/json")},
        )

    return httpx.MockTransport(handle)


class Cli:
    def __init__(self, scopes: tuple[str, ...] = ("plans",)) -> None:
        _, self.key = apikey_create(name="ci", scopes=list(scopes))
        self.transport = _transport(Client())

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(
            ["--url", "http://turnout.test", "--api-key", self.key, "plan", *argv],
            out,
            err,
            transport=self.transport,
        )
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def run() -> Cli:
    return Cli()


PLAN_FILE = """\
key: support-chat
name: "Support chat: GPT-4o to Claude Sonnet 4"
control:
  model: openai:gpt-4o-2024-08-06
  params: {temperature: 0.2, max_tokens: 1024}
candidate:
  model: anthropic:claude-sonnet-4-20250514
  params: {temperature: 0.2, max_tokens: 1024}
phases:
  - {kind: shadow, percent: 10, min_duration_minutes: 60, min_samples: 500}
  - {kind: rollout, steps: [10, 50, 100]}
"""


def test_the_shipped_schema_is_the_serializers() -> None:
    assert SDK_SCHEMA.read_text() == schema_text(), "run: python manage.py plan_schema"
    call_command("plan_schema", "--check", stdout=io.StringIO())
    assert plan_files.schema() == json.loads(schema_text())


def test_apply_creates_then_applying_again_changes_nothing(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "support-chat.yaml"
    path.write_text(PLAN_FILE)
    assert run("diff", "-f", str(path))[:2] == (2, f"{path}: would create plan support-chat\n")
    assert not MigrationPlan.objects.filter(key="support-chat").exists()
    code, out, err = run("apply", "-f", str(path))
    assert code == 0, err
    assert out == f"{path}: created plan support-chat\n"
    plan = MigrationPlan.objects.get(key="support-chat")
    audited = AuditEvent.objects.count()
    assert run("apply", "-f", str(path)) == (0, f"{path}: plan support-chat unchanged\n", "")
    assert run("diff", "-f", str(path)) == (0, f"{path}: plan support-chat unchanged\n", "")
    plan.refresh_from_db()
    assert plan.version == MigrationPlan.objects.get(key="support-chat").version
    assert AuditEvent.objects.count() == audited  # nothing written, nothing audited


def test_diff_names_each_change_and_exits_2(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN_FILE)
    assert run("apply", "-f", str(path))[0] == 0
    version = MigrationPlan.objects.get(key="support-chat").version
    path.write_text(PLAN_FILE.replace("steps: [10, 50, 100]", "steps: [5, 25, 100]"))
    code, out, _ = run("diff", "-f", str(path))
    assert code == 2
    assert out == (
        f"{path}: would change plan support-chat (1 fields)\n"
        "  phases[1].steps: [10, 50, 100] -> [5, 25, 100]\n"
    )
    assert MigrationPlan.objects.get(key="support-chat").version == version
    assert run("apply", "-f", str(path))[0] == 0
    assert MigrationPlan.objects.get(key="support-chat").version == version + 1
    assert run("diff", "-f", str(path))[0] == 0


def test_export_applies_back_to_a_fresh_install_byte_for_byte(run: Cli, tmp_path: Path) -> None:
    AlertChannel.objects.create(name="oncall", kind="slack", url_env="ONCALL_HOOK")
    make_plan(
        "checkout-assist",
        description="Checkout help: mini to Haiku",
        alert_channels=["oncall"],
    )
    for fmt in ("yaml", "json"):
        first = tmp_path / f"first.{fmt}"
        assert run("export", "checkout-assist", "-o", str(first))[0] == 0
        # A fresh install: the plan is gone (a draft), the file makes it again.
        assert Client(HTTP_AUTHORIZATION=f"Bearer {run.key}").delete(
            "/api/v1/plans/checkout-assist"
        ).status_code == 204  # fmt: skip
        code, out, err = run("apply", "-f", str(first))
        assert code == 0, err
        assert out == f"{first}: created plan checkout-assist\n"
        assert run("apply", "-f", str(first))[1] == f"{first}: plan checkout-assist unchanged\n"
        again = tmp_path / f"again.{fmt}"
        assert run("export", "checkout-assist", "-o", str(again))[0] == 0
        assert again.read_bytes() == first.read_bytes()
    document = yaml.safe_load((tmp_path / "first.yaml").read_text())
    assert document["alert_channels"] == ["oncall"]  # by name: the file holds no secret
    assert "ONCALL_HOOK" not in (tmp_path / "first.yaml").read_text()
    assert plan_files.problems(document) == []


def test_export_to_standard_output_and_list(run: Cli) -> None:
    make_plan("support-chat")
    code, out, _ = run("export", "support-chat")
    assert code == 0 and out.startswith(plan_files.HEADER)
    assert yaml.safe_load(out)["key"] == "support-chat"
    code, out, _ = run("list")
    assert code == 0 and out.split()[:3] == ["support-chat", "draft", "v1"]


def test_the_server_refuses_what_the_schema_cannot_see_by_field(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN_FILE.replace("openai:gpt-4o-2024-08-06", "openai:no-such-model"))
    code, out, err = run("apply", "-f", str(path))
    assert code == 1 and out == ""
    assert "validation_failed" in err and "  control.model: " in err
    assert not MigrationPlan.objects.filter(key="support-chat").exists()


def test_no_file_is_sent_when_one_is_invalid(run: Cli, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(PLAN_FILE)
    bad.write_text(PLAN_FILE.replace("key: support-chat", "key: other\nstep: [1]"))
    code, out, err = run("apply", "-f", str(good), str(bad))
    assert code == 1 and out == ""
    assert f"{bad}: not a valid plan file\n  step: unknown field\n" in err
    assert not MigrationPlan.objects.exists()


def test_keys_scopes_hold_for_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN_FILE)
    reader = Cli(scopes=("admin",))
    code, _, err = reader("apply", "-f", str(path))
    assert code == 1 and "error 403" in err
    assert reader("list")[0] == 0


def test_the_readme_example_applies_as_shown(run: Cli) -> None:
    example = ROOT / "examples" / "plans" / "support-chat.yaml"
    assert example.read_text() in (ROOT / "README.md").read_text()
    code, out, err = run("apply", "-f", str(example))
    assert (code, err) == (0, ""), err
    assert run("diff", "-f", str(example))[0] == 0
    code, exported, _ = run("export", "support-chat")
    assert yaml.safe_load(exported)["phases"][2]["steps"] == [25, 50, 100]


def test_a_file_naming_a_template_gets_its_copy(run: Cli, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    start, end = PLAN_FILE.index("phases:"), len(PLAN_FILE)
    path.write_text(PLAN_FILE[:start] + "template: careful\nguardrail_set: standard\n")
    assert PLAN_FILE[start:end] not in path.read_text()
    code, out, err = run("apply", "-f", str(path))
    assert code == 0, err
    spec = yaml.safe_load(run("export", "support-chat")[1])
    assert spec["phases"][2]["steps"] == [5, 10, 25, 50, 100]  # the careful playbook's
    assert len(spec["guardrails"]) == 4  # the standard set
    assert run("apply", "-f", str(path))[1] == f"{path}: plan support-chat unchanged\n"


EVERY_SETTING = """\
metrics:
  - {name: task_completed, kind: rate, direction: higher_is_better}
  - {name: csat, kind: mean, lower_bound: 1, upper_bound: 5, description: "1-5 rating"}
guardrails:
  - {metric: error_rate, tolerance_kind: relative, tolerance: 1.5}
  - {metric: task_completed, tolerance_kind: absolute, tolerance: 0.02}
  - {metric: csat, tolerance_kind: absolute, tolerance: 0.1, action: pause}
segment_dimensions: [tenant, lang]
segment_top_k: 10
segment_on_regression: exclude
detector_arl_days: 7
holdout_percent: 2
holdout_watch_minutes: 120
holdout_min_samples: 5000
"""


def test_every_setting_round_trips_through_files_and_diffs_readably(
    run: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN_FILE + EVERY_SETTING)
    code, out, err = run("apply", "-f", str(path))
    assert code == 0, err
    exported = tmp_path / "exported.yaml"
    assert run("export", "support-chat", "-o", str(exported))[0] == 0
    document = yaml.safe_load(exported.read_text())
    assert [m["name"] for m in document["metrics"]] == ["csat", "task_completed"]
    assert document["detector_arl_days"] == 7 and document["holdout_percent"] == 2
    assert document["segment_dimensions"] == ["tenant", "lang"]
    # apply(export(plan)) is a no-op, and on a fresh install it makes the same plan.
    assert run("diff", "-f", str(exported)) == (0, f"{exported}: plan support-chat unchanged\n", "")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {run.key}")
    assert client.delete("/api/v1/plans/support-chat").status_code == 204
    assert run("apply", "-f", str(exported))[0] == 0
    again = tmp_path / "again.yaml"
    assert run("export", "support-chat", "-o", str(again))[0] == 0
    assert again.read_bytes() == exported.read_bytes()
    # A change to a declaration and to a setting: one line each, by path.
    path.write_text(
        (PLAN_FILE + EVERY_SETTING)
        .replace("upper_bound: 5", "upper_bound: 10")
        .replace("detector_arl_days: 7", "detector_arl_days: 3")
    )
    code, out, _ = run("diff", "-f", str(path))
    assert code == 2
    assert out == (
        f"{path}: would change plan support-chat (2 fields)\n"
        "  metrics[0].upper_bound: 5 -> 10\n"
        "  detector_arl_days: 7 -> 3\n"
    )
