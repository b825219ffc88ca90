"""The rules on what a provider connection or alert channel may name (pure, no database): the
attacks of issue 14 item 4 (a key variable naming Turnout's own secrets or cloud credentials,
a base URL at a metadata service or an address in disguise) and the settings' strict parsing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from migrations_app.secret_policy import (
    HostRules,
    host_problem,
    parse_host_rules,
    parse_var_patterns,
    url_problem,
    var_problem,
)
from tests.controlplane.test_settings import _load_settings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = parse_host_rules("TURNOUT_PROVIDER_HOSTS", settings.TURNOUT_PROVIDER_HOSTS)
ANY = parse_host_rules("H", ["*"])


def key_problem(name: str, allowed: tuple[str, ...] = ("*_API_KEY",)) -> str | None:
    return var_problem(
        name, allowed=allowed, reserved=settings.TURNOUT_RESERVED_VARS, setting="KEYS"
    )


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MY_VLLM_API_KEY"])
def test_vendor_key_variables_are_allowed_by_default(name: str) -> None:
    assert key_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "PATH",
        "HOME",
    ],
)
def test_secrets_and_other_variables_are_refused_by_default(name: str) -> None:
    assert key_problem(name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "SECRET_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "EMAIL_HOST_PASSWORD",
        "TURNOUT_METRICS_TOKEN",
        "TURNOUT_API_KEY",  # matches *_API_KEY, but TURNOUT_* is Turnout's own
        "SECRET_KEY_FILE",
        "PGPASSWORD",
    ],
)
def test_turnouts_own_settings_are_refused_even_when_everything_is_allowed(name: str) -> None:
    problem = key_problem(name, allowed=("*",))
    assert problem is not None and "Turnout's own settings" in problem


def test_every_variable_the_settings_read_is_reserved() -> None:
    """A secret added to settings.py later is refused without anyone remembering to list it."""
    source = (ROOT / "controlplane" / "settings.py").read_text()
    names = set(re.findall(r"env_\w+\(\s*\"([A-Z0-9_]+)\"", source))
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "EMAIL_HOST_PASSWORD"} <= names
    for name in sorted(names):
        assert key_problem(name, allowed=("*",)) is not None, name


def test_variable_names_must_be_names() -> None:
    assert "not an environment variable name" in (key_problem("A-B_API_KEY") or "")
    assert "not an environment variable name" in (key_problem("") or "")


def test_patterns_are_parsed_strictly() -> None:
    assert parse_var_patterns("P", ["*_API_KEY", "VLLM_?"]) == ("*_API_KEY", "VLLM_?")
    with pytest.raises(
        ImproperlyConfigured, match=re.escape("P: 'A[B]' is not a variable-name pattern")
    ):
        parse_var_patterns("P", ["A[B]"])


# --- hosts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",  # the vendor's own endpoint
        "https://api.openai.com/v1",
        "https://API.Mistral.ai./v1",
        "http://127.0.0.1:8123/v1",  # the simulator
        "http://localhost:11434/v1",
        "http://[::1]:8000",
    ],
)
def test_the_default_allows_the_vendors_and_this_machine(url: str) -> None:
    assert url_problem(url, DEFAULT) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://attacker.example/v1",
        "http://10.0.0.5:8000/v1",  # private: only when listed
        "http://192.168.1.10/v1",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1%25eth0]/",
        "http://2852039166/",  # 169.254.169.254 as one decimal number
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://169.254.43518/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64
        "http://[2002:a9fe:a9fe::1]/",  # 6to4
        "http://0.0.0.0:8000/",
        "http://api.openai.com@attacker.example/",
        "http://attacker.example\\@api.openai.com/",
        "http://user:pw@api.openai.com/",
        "ftp://api.openai.com/",
        "file:///etc/passwd",
        "http://api.openai.com /",
        "http://xn--pi-nmc.openai.com/",  # punycode of a look-alike: not listed
        "http://аpi.openai.com/",  # Cyrillic a: not a host name we take
        "http:///v1",
        "http://api.openai.com:99999/",
    ],
)
def test_the_default_refuses_everything_else(url: str) -> None:
    assert url_problem(url, DEFAULT) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://metadata.google.internal/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://2852039166/",
        "http://[ff02::1]/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
    ],
)
def test_metadata_and_link_local_are_refused_whatever_is_listed(url: str) -> None:
    rules = parse_host_rules("H", ["*", "10.0.0.0/8", "fd12::/16"])
    assert "never allowed" in (url_problem(url, rules) or "")


def test_star_allows_any_name_and_public_address_but_not_internal_ones() -> None:
    assert url_problem("https://llm.internal.example/v1", ANY) is None
    assert url_problem("https://8.8.8.8/v1", ANY) is None
    assert "private or loopback" in (url_problem("http://10.1.2.3/v1", ANY) or "")
    assert "private or loopback" in (url_problem("http://127.0.0.1/v1", ANY) or "")
    assert url_problem("http://localhost/v1", ANY) is not None
    assert url_problem("http://a.localhost/v1", ANY) is not None


def test_listed_names_suffixes_and_networks() -> None:
    rules = parse_host_rules("H", ["vllm.corp.example", "*.llm.example", "10.0.0.0/8", "fd12::1"])
    assert url_problem("http://vllm.corp.example:8000/v1", rules) is None
    assert url_problem("http://a.b.llm.example/v1", rules) is None
    assert url_problem("http://llm.example/v1", rules) is not None  # the suffix, not the domain
    assert url_problem("http://evilllm.example/v1", rules) is not None
    assert url_problem("http://10.9.8.7/v1", rules) is None
    assert url_problem("http://10.1/v1", rules) is None  # 10.0.0.1 in disguise, still inside
    assert url_problem("http://11.0.0.1/v1", rules) is not None
    assert url_problem("http://[fd12::1]:80/v1", rules) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("169.254.0.0/16", "no provider may have"),
        ("169.254.169.254", "no provider may have"),
        ("0.0.0.0/0", "no provider may have"),
        ("fc00::/7", "no provider may have"),  # holds fd00:ec2::254
        ("metadata.google.internal", "cloud metadata"),
        ("10.0.0.1/8", "is not a host name"),
        ("http://api.openai.com", "is not a host name"),
        ("2852039166", "is not a host name"),
        ("*.", "is not a host name"),
    ],
)
def test_host_entries_are_parsed_strictly(entry: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_host_rules("TURNOUT_PROVIDER_HOSTS", [entry])


def test_an_empty_list_allows_only_the_vendors_own_endpoints() -> None:
    rules = HostRules()
    assert url_problem("", rules) is None
    assert host_problem("api.openai.com", rules) is not None


@pytest.mark.live  # a child Python loads the settings
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TURNOUT_PROVIDER_HOSTS": "api.openai.com,169.254.169.254"}, "TURNOUT_PROVIDER_HOSTS"),
        ({"TURNOUT_PROVIDER_KEY_VARS": "OPENAI API KEY"}, "TURNOUT_PROVIDER_KEY_VARS"),
        ({"TURNOUT_ALERT_VARS": "*_URL,$X"}, "TURNOUT_ALERT_VARS"),
    ],
)
@pytest.mark.live
def test_a_bad_rule_stops_the_process_naming_the_setting(env: dict[str, str], message: str) -> None:
    result = _load_settings(**env)
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
