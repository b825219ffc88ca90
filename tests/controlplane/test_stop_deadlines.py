"""Every way Turnout is run stops within a bounded time: the deadlines are configured where
each process is started (docker/compose.yml, gunicorn.conf.py, the launcher). The launcher's
stop is exercised for real in test_launcher.py; Compose can only be read here (no engine)."""

from __future__ import annotations

import runpy
import shutil
import subprocess

import pytest

from controlplane import launcher
from tests.conftest import ROOT

APP_SERVICES = ("web", "stream", "worker", "beat")


def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose missing (make system-deps)")
    rendered = subprocess.run(
        ["docker-compose", "-f", "docker/compose.yml", "config"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(yaml.safe_load(rendered)["services"])


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60}
    for unit in ("ms", "s", "m"):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


@pytest.mark.live
def test_every_compose_service_stops_within_a_deadline_under_an_init() -> None:
    services = _compose()
    for name in APP_SERVICES:
        service = services[name]
        assert service.get("init") is True, name  # signals passed on, children reaped
        assert 0 < _seconds(service["stop_grace_period"]) <= 120, name
    stream = services["stream"]["command"]
    timeout = stream[stream.index("--timeout-graceful-shutdown") + 1]
    assert float(timeout) < _seconds(services["stream"]["stop_grace_period"])
    # The API names the stream server, so SDKs given the API's URL find it.
    assert services["web"]["environment"]["TURNOUT_STREAM_PORT"] == "8001"


def test_gunicorn_kills_a_stuck_worker_before_the_launcher_and_compose_would() -> None:
    conf = runpy.run_path(str(ROOT / "controlplane" / "gunicorn.conf.py"))
    assert 0 < conf["graceful_timeout"] < launcher.STOP_TIMEOUT
    assert launcher.STREAM_GRACE_SECONDS < launcher.STOP_TIMEOUT


def test_the_launcher_stop_timeout_is_read_strictly() -> None:
    assert launcher.stop_timeout({}) == launcher.STOP_TIMEOUT
    assert launcher.stop_timeout({"TURNOUT_STOP_TIMEOUT": "2.5"}) == 2.5
    for bad in ("soon", "-1", "9999"):
        with pytest.raises(SystemExit, match="TURNOUT_STOP_TIMEOUT"):
            launcher.stop_timeout({"TURNOUT_STOP_TIMEOUT": bad})
