"""The OpenAPI schema: valid 3.1, every API route in it, docs served without a CDN, and the live
API (gunicorn on PostgreSQL, as production runs it) answering only what the schema says."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import URLPattern
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from migrations_app import urls
from migrations_app.api.keys import apikey_create
from tests.conftest import ARTIFACTS, ROOT
from tests.factories import make_plan, started_plan


@pytest.fixture
def schema(db: None) -> dict[str, Any]:
    response = Client().get("/api/v1/schema?format=json")
    assert response.status_code == 200
    return dict(response.json())


def _route(pattern: URLPattern) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))


def test_the_schema_is_valid_openapi_3_1(schema: dict[str, Any]) -> None:
    assert schema["openapi"] == "3.1.0"
    validate(schema, cls=OpenAPIV31SpecValidator)


def test_every_api_route_is_described_with_its_bodies_and_errors(schema: dict[str, Any]) -> None:
    routes = {_route(p) for p in urls.urlpatterns if p.name not in ("schema", "api-docs")}
    assert routes == set(schema["paths"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert any(s.startswith("2") for s in responses), (path, method)
            # what gunicorn answers itself (a request line or headers too long) is documented
            assert {"414", "431"} <= set(responses), (path, method)
            if operation.get("security"):  # every keyed endpoint says what a bad key gets
                assert "401" in responses and "403" in responses, (path, method)
            if "requestBody" in operation:  # a body beyond the limit: 413 on every API path
                assert "413" in responses, (path, method)
    error = schema["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"code", "message", "details"}
    code = error["properties"]["code"]
    ref = code.get("$ref") or code.get("allOf", [{}])[0].get("$ref")
    if ref:
        code = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "version_conflict" in code["enum"]
    plan = schema["components"]["schemas"]["PlanWriteRequest"]
    assert plan["additionalProperties"] is False
    assert {"key", "name", "control", "candidate"} <= set(plan["required"])


def test_the_docs_page_serves_its_own_assets(db: None) -> None:
    page = Client().get("/api/docs").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', page)
    assert assets, page[:500]
    for asset in assets:
        assert asset.startswith("/static/"), f"{asset}: a CDN, not Turnout"
        assert finders.find(asset.removeprefix("/static/")), asset
    assert "https://" not in page.replace("https://swagger.io", "")


# Hang guards, not speed limits: ~4,000 requests take 41 s alone on a quiet machine, and
# took 192 s in the full suite on a slow CI machine (stop 27), near the suite's 300 s default.
SCHEMATHESIS_TIMEOUT = 600


@pytest.mark.live
@pytest.mark.timeout(SCHEMATHESIS_TIMEOUT + 180)
def test_the_live_api_answers_only_what_the_schema_says(gunicorn_factory: Any) -> None:
    """schemathesis over every operation, every phase once with a fixed seed and number of
    examples: no 5xx, no status, content type or body the schema does not describe."""
    started_plan("running-chat")
    make_plan("support-chat")  # the schema's example key: examples reach the plan's answers
    _, key = apikey_create(name="fuzz", scopes=["decide", "report", "admin", "plans"])
    server = gunicorn_factory()
    ARTIFACTS.mkdir(exist_ok=True)
    # The schema is fetched here, with time to spare for a first request on a busy machine
    # (schemathesis gives a schema URL 10 s), and handed to schemathesis as a file.
    spec = ARTIFACTS / "openapi.json"
    with urllib.request.urlopen(f"{server.url}/api/v1/schema?format=json", timeout=120) as r:
        spec.write_bytes(r.read())
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", str(spec), "--url", server.url,
        "--request-timeout", "30",
        "-H", f"Authorization: Bearer {key}",
        "--checks", "not_a_server_error,status_code_conformance,"
        "response_schema_conformance,content_type_conformance",
        "--seed", "18", "--max-examples", "45", "--workers", "1",
        "--generation-database", "none", "--no-color", "--max-failures", "20",
    ]  # fmt: skip
    # No --max-time: with a budget schemathesis repeats fuzzing and stateful testing until it
    # is spent (it always took the whole 90 s), so how many cases ran depended on the machine.
    # 45 examples an operation, in one pass of each phase, send about as many (~4,000) as the
    # budget did in the suite on this 2-core machine, the same ones every run, in half the time.
    run = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=SCHEMATHESIS_TIMEOUT
    )
    (ARTIFACTS / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", run.stdout), run.stdout[-2000:]
