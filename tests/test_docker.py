"""docker/compose.yml is valid for Compose (no engine runs here, so validation is what CI can do)."""

import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.live  # runs docker-compose


def test_compose_file_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", "docker/compose.yml", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    services = subprocess.run(
        ["docker-compose", "-f", "docker/compose.yml", "config", "--services"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert {"web", "worker", "beat", "postgres", "redis"} <= set(services)
