from __future__ import annotations

import pytest

from migrations_app.alerts import DeliveryError, Target, resolve_target


def test_resolves_names_to_values() -> None:
    env = {"SLACK_URL": "https://hooks.slack.com/services/T/B/X ", "PD_KEY": "abc"}
    target = resolve_target(url_env="SLACK_URL", secret_env="PD_KEY", environ=env)
    assert target == Target(url="https://hooks.slack.com/services/T/B/X", secret="abc")


def test_reads_the_file_variant(tmp_path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("from-a-file\n")
    target = resolve_target(secret_env="PD_KEY", environ={"PD_KEY_FILE": str(secret_file)})
    assert target.secret == "from-a-file"


@pytest.mark.parametrize("env", [{}, {"PD_KEY": ""}, {"PD_KEY_FILE": "/nonexistent/key"}])
def test_missing_secret_is_permanent(env: dict[str, str]) -> None:
    with pytest.raises(DeliveryError) as caught:
        resolve_target(secret_env="PD_KEY", environ=env)
    assert caught.value.transient is False
    assert "PD_KEY" in caught.value.message


def test_recipients_from_the_row_text() -> None:
    target = resolve_target(recipients=" oncall@example.com, ,ml-team@example.com ", environ={})
    assert target.recipients == ("oncall@example.com", "ml-team@example.com")


def test_repr_and_redact_hide_url_and_secret() -> None:
    target = Target(url="https://hooks.slack.com/services/T/B/X", secret="abc123")
    assert "hooks.slack" not in repr(target) and "abc123" not in repr(target)
    assert target.redact("POST https://hooks.slack.com/services/T/B/X key=abc123") == (
        "POST [redacted] key=[redacted]"
    )
