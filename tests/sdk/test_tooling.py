"""The SDK's tooling holds: it is Django-free (ruff's banned imports on its source, and nothing of
the server in a process that imports every SDK module), typed (``py.typed`` ships, mypy is
strict on it and ``make lint`` runs mypy on it)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

SDK = ROOT / "sdk"
# The server's packages and its dependencies the SDK does not declare (sdk/pyproject.toml).
SERVER_MODULES = ["django", "rest_framework", "migrations_app", "controlplane"]


def _ruff(source: str, filename: str) -> list[str]:
    """The rule codes ruff reports for ``source`` as if it were the file ``filename``."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ruff")), "check", "--no-cache",
         "--output-format", "json", "--stdin-filename", filename, "-"],
        input=source, capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    return [finding["code"] for finding in json.loads(done.stdout)]


@pytest.mark.live
@pytest.mark.parametrize("module", SERVER_MODULES)
def test_ruff_refuses_a_server_import_in_the_sdk_only(module: str) -> None:
    source = f"import {module}\nfrom {module} import x\n\nprint({module}, x)\n"
    assert _ruff(source, "sdk/src/turnout/probe.py") == ["TID251", "TID251"]
    assert _ruff(source, "migrations_app/probe.py") == []


@pytest.mark.live
def test_importing_every_sdk_module_imports_nothing_of_the_server() -> None:
    """What ruff cannot see (an import by name, a dependency's own import) shows in a process
    that imports the whole SDK, providers included."""
    probe = (
        "import importlib, json, pkgutil, sys, turnout\n"
        "for m in pkgutil.walk_packages(turnout.__path__, 'turnout.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", check=True
    )
    loaded = set(json.loads(done.stdout))
    assert {"turnout", "httpx", "mmh3"} <= loaded
    assert loaded.isdisjoint(SERVER_MODULES)


def test_the_sdk_ships_its_types() -> None:
    assert (SDK / "src" / "turnout" / "py.typed").is_file()
    config = tomllib.loads((SDK / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["turnout"]


def test_mypy_is_strict_on_the_sdk_and_make_lint_runs_it() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    strict = [o for o in config["tool"]["mypy"]["overrides"] if o.get("strict")]
    assert any("turnout.*" in o["module"] for o in strict)
    lint = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "mypy sdk/src/turnout" in lint
