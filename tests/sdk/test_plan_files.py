"""Plan files offline: ``python -m turnout plan validate`` against the JSON Schema the SDK
ships (no server, no Django: ``pytest -p no:django tests/sdk/test_plan_files.py``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from turnout import cli, plan_files

GOOD = """\
key: support-chat
name: "Support chat: GPT-4o to Claude Sonnet 4"
control:
  model: openai:gpt-4o-2024-08-06
  params: &params {temperature: 0.2, max_tokens: 1024}
candidate:
  model: anthropic:claude-sonnet-4-20250514
  params: *params
phases:
  - {kind: shadow, percent: 10, min_duration_minutes: 60, min_samples: 500}
  - {kind: rollout, steps: [10, 50, 100]}
guardrails:
  - {metric: error_rate, tolerance_kind: relative, tolerance: 0.1, action: rollback}
alert_channels: [oncall]
"""


def validate(*paths: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["plan", "validate", "-f", *map(str, paths)], out, err)
    return code, out.getvalue(), err.getvalue()


def test_a_good_file_is_valid_offline_in_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "support-chat.yaml"
    yaml_file.write_text(GOOD)
    json_file = tmp_path / "support-chat.json"
    json_file.write_text(json.dumps(plan_files.load(yaml_file)))
    assert validate(yaml_file, json_file) == (
        0,
        f"{yaml_file}: valid\n{json_file}: valid\n",
        "",
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("steps: [10, 50, 100]", "step: [10, 50, 100]"), "phases[1].step: unknown field"),
        (("name: ", "title: "), "title: unknown field"),
        (("key: support-chat", "key: Support Chat"), "key: 'Support Chat' does not match"),
        (("tolerance: 0.1", "tolerance: a tenth"), "guardrails[0].tolerance: 'a tenth'"),
        (("kind: shadow", "kind: canary"), "phases[0].kind: 'canary' is not one of"),
        (("alert_channels: [oncall]", "alert_channels: oncall"), "alert_channels: 'oncall'"),
    ],
)
def test_what_is_wrong_is_named_by_field_path(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(GOOD.replace(*change))
    code, out, err = validate(path)
    assert code == 1 and out == ""
    assert err.startswith(f"{path}: not a valid plan file\n")
    assert f"  {problem}" in err, err


def test_a_missing_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(GOOD.replace('name: "Support chat: GPT-4o to Claude Sonnet 4"\n', ""))
    assert "  name: required\n" in validate(path)[2]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("key: [unclosed", "not valid YAML"),
        ("- a list\n- of things\n", "holds one object"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
         + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                   for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
         "aliases are expanded"),
    ],
)  # fmt: skip
def test_files_that_are_not_plans_are_refused_with_a_reason(
    tmp_path: Path, text: str, why: str
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    code, out, err = validate(path)
    assert code == 1 and out == "" and why in err, err


def test_an_oversized_or_missing_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text('{"key": "' + "x" * plan_files.MAX_FILE_BYTES + '"}')
    assert "over 1024 KiB" in validate(big)[2]
    assert validate(tmp_path / "absent.yaml")[0] == 1


def test_the_shipped_schema_is_a_valid_2020_12_schema() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(plan_files.schema())
    assert plan_files.schema()["additionalProperties"] is False
    assert "expected_version" not in plan_files.schema()["properties"]


def test_dump_round_trips_through_load(tmp_path: Path) -> None:
    document = plan_files.load(_write(tmp_path, GOOD))
    for fmt in ("yaml", "json"):
        path = tmp_path / f"again.{fmt}"
        path.write_text(plan_files.dump(document, fmt=fmt))
        assert plan_files.load(path) == document


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


SETTINGS = """\
metrics:
  - {name: csat, kind: mean, direction: higher_is_better, lower_bound: 1, upper_bound: 5}
  - {name: task_completed, kind: rate}
segment_dimensions: [tenant, lang]
segment_top_k: 10
segment_on_regression: exclude
detector_arl_days: 7
holdout_percent: 2
holdout_watch_minutes: 120
holdout_min_samples: 5000
"""


def test_every_plan_setting_is_in_the_schema(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + SETTINGS)
    assert validate(path) == (0, f"{path}: valid\n", "")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("kind: rate", "kind: median"), "metrics[1].kind: 'median' is not one of"),
        (("kind: rate}", "kind: rate, unit: '%'}"), "metrics[1].unit: unknown field"),
        (("name: csat", "name: CSAT"), "metrics[0].name: 'CSAT' does not match"),
        (("upper_bound: 5", "upper_bound: 10000000000000"), "metrics[0].upper_bound: 100000"),
        (("[tenant, lang]", "[tenant, lang, tier, region]"), "segment_dimensions: ['tenant'"),
        (("[tenant, lang]", "[9lives]"), "segment_dimensions[0]: '9lives' does not match"),
        (("segment_top_k: 10", "segment_top_k: 0"), "segment_top_k: 0 is less than"),
        (("on_regression: exclude", "on_regression: ignore"), "segment_on_regression: 'ignore'"),
        (("detector_arl_days: 7", "detector_arl_days: 0.5"), "detector_arl_days: 0.5 is less"),
        (("holdout_percent: 2", "holdout_percent: 25"), "holdout_percent: 25 is greater"),
        (("watch_minutes: 120", "watch_minutes: 0"), "holdout_watch_minutes: 0 is less"),
    ],
)
def test_bad_settings_are_named_by_field_path_offline(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    path = _write(tmp_path, GOOD + SETTINGS.replace(*change))
    code, out, err = validate(path)
    assert code == 1 and out == ""
    assert f"  {problem}" in err, err


def test_cohort_steps_are_valid_offline_and_a_bad_one_is_named(tmp_path: Path) -> None:
    cohort_first = "steps: [{cohort: internal, percent: 100}, 10, 50, 100]"
    path = _write(tmp_path, GOOD.replace("steps: [10, 50, 100]", cohort_first))
    assert validate(path)[0] == 0
    path.write_text(GOOD.replace("steps: [10, 50, 100]", cohort_first.replace("internal", "QA")))
    code, _, err = validate(path)
    assert code == 1 and "  phases[1].steps[0]: " in err, err


def test_a_huge_value_is_not_echoed_whole(tmp_path: Path) -> None:
    """A 10^6-character description was quoted whole in its message (a megabyte on stderr)."""
    path = _write(tmp_path, GOOD + "description: " + "x" * 1_000_000 + "\n")
    [problem] = plan_files.problems(plan_files.load(path))
    assert problem.path == "description" and len(problem.message) < 300
    assert problem.message.endswith("is too long")
    code, _, err = validate(path)
    assert code == 1 and len(err) < 1_000


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD + "alpha: .nan\n", "alpha"),
        (GOOD.replace("tolerance: 0.1", "tolerance: .nan"), "guardrails[0].tolerance"),
        (GOOD.replace("temperature: 0.2", "temperature: -.inf"), "control.params.temperature"),
    ],
)
def test_a_number_that_is_not_finite_is_named_offline(
    tmp_path: Path, text: str, field: str
) -> None:
    """NaN passes every bound in the schema (each comparison is false): ``validate`` called
    ``alpha: .nan`` valid and ``diff`` / ``apply`` stopped on a traceback with status 2, which
    the README's CI job takes for "diff found changes"."""
    path = _write(tmp_path, text)
    code, out, err = validate(path)
    assert code == 1 and out == ""
    assert f"  {field}: not a finite number" in err, err
    for command in ("diff", "apply"):
        out_io, err_io = io.StringIO(), io.StringIO()
        argv = ["--url", "http://127.0.0.1:9", "--api-key", "tk_x", "plan", command, "-f"]
        assert cli.main([*argv, str(path)], out_io, err_io) == 1  # refused before any is sent
        assert f"  {field}: not a finite number" in err_io.getvalue()


def test_diff_without_a_server_or_key_is_a_failure_not_changes_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 2 is ``plan diff``'s "changes found", which the README's CI job accepts
    (``|| [ $? -eq 2 ]``): a job without the key (a pull request from a fork gets no
    secrets) passed without asking any server."""
    monkeypatch.delenv("TURNOUT_URL", raising=False)
    monkeypatch.delenv("TURNOUT_API_KEY", raising=False)
    path = _write(tmp_path, GOOD)
    for argv in (["--url", "http://127.0.0.1:9"], []):
        err = io.StringIO()
        assert cli.main([*argv, "plan", "diff", "-f", str(path)], io.StringIO(), err) == 1
        assert "TURNOUT_API_KEY" in err.getvalue()
