"""The plan files' JSON Schema, generated from the plan document's serializer (through the
OpenAPI generator, so the API's request body and a plan file are one shape).

``python manage.py plan_schema`` writes it to ``sdk/src/turnout/schemas/plan.schema.json``,
which the SDK ships and ``python -m turnout plan validate`` checks files against offline;
tests/api/test_plan_files.py fails when the committed file is not what the serializer says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from drf_spectacular.generators import SchemaGenerator

SDK_SCHEMA = Path(settings.BASE_DIR) / "sdk" / "src" / "turnout" / "schemas" / "plan.schema.json"
SCHEMA_ID = "https://turnout.dev/schemas/plan.schema.json"
_REF = "#/components/schemas/"


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF):
            found.add(ref.removeprefix(_REF))
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace(_REF, "#/$defs/") if k == "$ref" and isinstance(v, str) else _rewrite(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def plan_file_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a plan file: the API's plan document, without
    ``expected_version`` (a file says what the plan is, not which version it replaces)."""
    openapi = SchemaGenerator(urlconf="migrations_app.api.openapi_urls").get_schema(
        request=None, public=True
    )
    components = openapi["components"]["schemas"]
    root = json.loads(json.dumps(components["PlanWriteRequest"]))
    root["properties"].pop("expected_version", None)
    for prop in root["properties"].values():
        prop.pop("writeOnly", None)
    root["description"] = (
        "A Turnout migration plan, as `python -m turnout plan apply -f` takes it and "
        "`plan export` writes it (YAML or JSON). What is left out takes its default: phases "
        "from `template` (else the standard playbook), guardrails from `guardrail_set` (else "
        "the template's, else the default set; [] for none). Models as provider:model_id, "
        "alert channels by name: no secret is ever in a plan file."
    )
    needed: set[str] = set()
    _refs(root, needed)
    pending = list(needed)
    while pending:
        name = pending.pop()
        more: set[str] = set()
        _refs(components[name], more)
        for extra in more - needed:
            needed.add(extra)
            pending.append(extra)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Turnout plan file",
        **_rewrite(root),
        "$defs": {name: _rewrite(components[name]) for name in sorted(needed)},
    }


def schema_text() -> str:
    return json.dumps(plan_file_schema(), indent=2, sort_keys=False) + "\n"
