"""Where the API says the change stream is (``Turnout-Stream-URL`` on config answers, and the
421 on the stream path). ``make run`` used to advertise a fixed loopback URL (a wildcard bind
as 127.0.0.1), which an SDK on another machine cannot reach; now, unless TURNOUT_STREAM_URL
names it, the stream is on the host the SDK reached the API by, at TURNOUT_STREAM_PORT."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client, override_settings

from migrations_app.api.keys import apikey_create

pytestmark = pytest.mark.django_db

HOSTS = ["turnout.internal", "10.1.2.3", "[fd00::7]"]


@pytest.fixture
def headers() -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {apikey_create(name='sdk', scopes=['decide'])[1]}"}


@override_settings(TURNOUT_STREAM_URL=None, TURNOUT_STREAM_PORT=8001, ALLOWED_HOSTS=HOSTS)
@pytest.mark.parametrize("host", HOSTS)
def test_the_stream_is_advertised_on_the_host_the_sdk_reached(
    host: str, headers: dict[str, str]
) -> None:
    config = Client().get("/api/v1/sdk/config", HTTP_HOST=f"{host}:8000", **headers)
    assert config.status_code == 200
    assert config["Turnout-Stream-URL"] == f"http://{host}:8001"
    misdirected = Client().get("/api/v1/sdk/stream", HTTP_HOST=host, **headers)
    assert misdirected.status_code == 421
    assert misdirected["Turnout-Stream-URL"] == f"http://{host}:8001"
    assert misdirected.json()["details"] == {"stream_url": f"http://{host}:8001"}


@override_settings(
    TURNOUT_STREAM_URL="https://stream.example.com", TURNOUT_STREAM_PORT=8001, ALLOWED_HOSTS=HOSTS
)
def test_a_configured_url_wins(headers: dict[str, str]) -> None:
    config = Client().get("/api/v1/sdk/config", HTTP_HOST="turnout.internal:8000", **headers)
    assert config["Turnout-Stream-URL"] == "https://stream.example.com"


@override_settings(TURNOUT_STREAM_URL=None, TURNOUT_STREAM_PORT=0)
def test_no_stream_server_known_none_advertised(headers: dict[str, str]) -> None:
    config = Client().get("/api/v1/sdk/config", **headers)
    assert "Turnout-Stream-URL" not in config
    assert Client().get("/api/v1/sdk/stream", **headers).json()["details"] == {"stream_url": None}


def test_make_run_advertises_no_fixed_loopback_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The launcher passes the stream's port, not a URL on its bind address."""
    from controlplane import launcher

    seen: dict[str, dict[str, str]] = {}

    def stop_here(command: list[str], *, env: dict[str, str], **kwargs: object) -> None:
        seen["env"] = env
        raise SystemExit(0)

    monkeypatch.setattr(launcher.subprocess, "run", stop_here)
    monkeypatch.setenv("TURNOUT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TURNOUT_HOST", "0.0.0.0")
    monkeypatch.setenv("TURNOUT_PORT", "0")
    monkeypatch.setenv("TURNOUT_STREAM_PORT", "0")
    monkeypatch.delenv("TURNOUT_STREAM_URL", raising=False)
    with pytest.raises(SystemExit):
        launcher.main()
    assert "TURNOUT_STREAM_URL" not in seen["env"]
    assert seen["env"]["TURNOUT_STREAM_PORT"] == "0"
