"""Settings fail at start, naming the variable, on a bad value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from controlplane.env import (
    env_bool,
    env_float,
    env_http_url,
    env_int,
    env_list,
    parse_database_url,
)
from tests.conftest import ROOT


def _load_settings(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    full.update({"DJANGO_SETTINGS_MODULE": "controlplane.settings", "DEBUG": "1", **env})
    code = "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "DATABASE_URL: unsupported scheme"),
        ({"DATABASE_URL": "postgres://user@host:notaport/db"}, "DATABASE_URL: malformed URL"),
        (
            {"DATABASE_URL": "postgres://user@host:5432/"},
            "DATABASE_URL: the URL must name one database",
        ),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL: expected redis://"),
        (
            {"TURNOUT_INGEST_MAX_BATCH": "lots"},
            "TURNOUT_INGEST_MAX_BATCH: expected an integer, got 'lots'",
        ),
        (
            {"TURNOUT_EVALUATION_INTERVAL": "0.1"},
            "TURNOUT_EVALUATION_INTERVAL: must be at least 0.5",
        ),
        ({"DEBUG": "maybe"}, "DEBUG: expected a boolean"),
        ({"TURNOUT_STREAM_URL": "127.0.0.1:8001"}, "TURNOUT_STREAM_URL: expected http(s)://"),
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY: required when DEBUG is off"),
    ],
)
@pytest.mark.live
def test_bad_setting_stops_the_process_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    result = _load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


@pytest.mark.live
def test_embedded_defaults_without_services() -> None:
    result = _load_settings()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.db.backends.sqlite3"


def test_database_url_parses_postgres_with_options() -> None:
    db = parse_database_url(
        "DATABASE_URL", "postgresql://u%40x:p%2Fw@db.internal:6543/turnout?sslmode=require"
    )
    assert db == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "turnout",
        "USER": "u@x",
        "PASSWORD": "p/w",
        "HOST": "db.internal",
        "PORT": "6543",
        "OPTIONS": {"sslmode": "require"},
    }
    assert (
        parse_database_url("DATABASE_URL", "sqlite:////tmp/t.sqlite3")["NAME"] == "/tmp/t.sqlite3"
    )


def test_parsers() -> None:
    environ = {"A": "yes", "B": " 12 ", "C": "1.5", "D": "a, b,,c", "E": "nan"}
    assert env_bool("A", False, environ=environ) is True
    assert env_int("B", 0, environ=environ) == 12
    assert env_float("C", 0.0, environ=environ) == 1.5
    assert env_list("D", [], environ=environ) == ["a", "b", "c"]
    assert env_int("MISSING", 7, environ=environ) == 7
    with pytest.raises(ImproperlyConfigured, match="E: expected a finite number"):
        env_float("E", 0.0, environ=environ)
    with pytest.raises(ImproperlyConfigured, match="B: must be at most 10"):
        env_int("B", 0, maximum=10, environ=environ)


def test_http_url() -> None:
    assert env_http_url("U", environ={}) is None
    assert env_http_url("U", environ={"U": " https://stream.example:8443/ "}) == (
        "https://stream.example:8443"
    )
    for bad in ("ftp://x", "http://", "http://u:p@x", "http://x?a=1", "http://x:port"):
        with pytest.raises(ImproperlyConfigured, match="U: "):
            env_http_url("U", environ={"U": bad})


def test_secret_from_file(tmp_path: os.PathLike[str]) -> None:
    secret = os.path.join(tmp_path, "key")
    with open(secret, "w") as fh:
        fh.write("s3cret\n")
    from controlplane.env import env_str

    assert env_str("SECRET_KEY", environ={"SECRET_KEY_FILE": secret}) == "s3cret"
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY_FILE: cannot read"):
        env_str("SECRET_KEY", environ={"SECRET_KEY_FILE": secret + ".missing"})
