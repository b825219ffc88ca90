"""Plan files: a migration plan kept in a repository as YAML or JSON, and
``python -m turnout plan validate|diff|apply|export|list``.

A plan file is the plans API's document (``GET /api/v1/plans/{key}`` answers it as ``spec``).
Its JSON Schema ships with this package (``schemas/plan.schema.json``, generated from the
server's serializer), so ``plan validate`` checks files offline, in CI on a pull request,
before any server sees them. Models are named ``provider:model_id`` and alert channels by
name: a plan file never holds a secret. Needs the ``plans`` extra (``pip install
turnout[plans]``: PyYAML and jsonschema).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA_RESOURCE = "schemas/plan.schema.json"
# What an export writes at the top (constant: exporting the same plan twice, or from another
# install, gives the same bytes).
HEADER = "# A Turnout plan: python -m turnout plan apply -f <this file>\n"
# Bounds on what a file may hold (a real plan is a few KiB and a few hundred values).
MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 100_000


class PlanFileError(Exception):
    """A file that cannot be read as a plan (missing, not YAML/JSON, not an object)."""


@dataclass(frozen=True, slots=True)
class Problem:
    path: str  # phases[1].steps[0], as the server names fields
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(the plan)'}: {self.message}"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The plan files' JSON Schema this package ships."""
    text = resources.files("turnout").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def load(path: str | Path) -> dict[str, Any]:
    """A plan file's document: YAML (``.yaml``, ``.yml``) or JSON (anything else; YAML reads it
    too). Raises :class:`PlanFileError`."""
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PlanFileError(f"{path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise PlanFileError(f"{path}: over {MAX_FILE_BYTES // 1024} KiB: not a plan file")
    try:
        text = raw.decode("utf-8")
        data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise PlanFileError(f"{path}: not valid {_format(path)}: {exc}") from None
    except RecursionError:
        raise PlanFileError(f"{path}: nested too deeply to be a plan") from None
    if not isinstance(data, dict):
        raise PlanFileError(f"{path}: a plan file holds one object (key, name, control, ...)")
    if _too_big(data):
        # YAML aliases can make a small file a huge document (a "billion laughs").
        raise PlanFileError(f"{path}: over {MAX_NODES} values once its aliases are expanded")
    return data


def _too_big(data: Any) -> bool:
    """More than MAX_NODES values, counting an aliased value each time it is used (stops
    counting there, so a file of nested aliases costs at most MAX_NODES steps)."""
    budget = MAX_NODES
    stack = [data]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _format(path: str | Path) -> str:
    return "YAML" if str(path).endswith((".yaml", ".yml")) else "JSON"


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems(document: Mapping[str, Any]) -> list[Problem]:
    """What the schema says is wrong with ``document``, offline, by field path. The server
    checks more (the catalog, the channels, the phases in order): ``plan diff`` asks it."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema())
    found = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path))):
        path = _path(error.absolute_path)
        if error.validator == "additionalProperties":
            for name in _extra(error.instance, error.schema):
                found.append(Problem(_path([*error.absolute_path, name]), "unknown field"))
            continue
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            found.append(Problem(_path([*error.absolute_path, missing]), "required"))
            continue
        found.append(Problem(path, _short(error.message)))
    found.extend(Problem(_path(parts), "not a finite number") for parts in _not_finite(document))
    return found


def _not_finite(data: Any, parts: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Where the document holds NaN or an infinity (YAML's ``.nan``, ``.inf``; JSON's ``NaN``,
    which Python reads): NaN passes every bound in the schema, and no JSON body carries one."""
    if isinstance(data, float) and not math.isfinite(data):
        yield parts
    elif isinstance(data, dict):
        for name, value in data.items():
            yield from _not_finite(value, (*parts, name))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _not_finite(value, (*parts, index))


def _short(message: str, keep: int = 80) -> str:
    """jsonschema's message quotes the value it refuses: a 10^6-character description made
    a megabyte of output. The start and the end (where it says what is wrong) are kept."""
    if len(message) <= 3 * keep:
        return message
    return f"{message[:keep]} ... ({len(message) - 2 * keep:,} characters) ... {message[-keep:]}"


def _extra(instance: Any, schema_part: Mapping[str, Any]) -> Iterator[str]:
    allowed = set(schema_part.get("properties", {}))
    return (
        (str(k) for k in instance if k not in allowed) if isinstance(instance, dict) else iter(())
    )


def dump(document: Mapping[str, Any], *, fmt: str = "yaml") -> str:
    """A document as a plan file: YAML (keys in the document's order) or JSON."""
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    import yaml

    return HEADER + yaml.safe_dump(
        dict(document), sort_keys=False, allow_unicode=True, default_flow_style=None, width=100
    )
