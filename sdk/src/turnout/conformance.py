"""The frozen routing vectors, for the SDK's tests and the server's: the same file for both.

``VECTORS`` is the path of ``sdk/conformance/routing-v1.json`` in a source checkout (the
package is installed editable in development). Each vector holds ``plan`` (a snapshot entry,
or ``None`` for a plan the snapshot does not hold), ``unit``, ``bucket``, ``shadow_bucket``
and ``expected`` (``arm``, ``shadow``, ``reason``); see ``sdk/conformance/generate.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[2] / "conformance" / "routing-v1.json"
#: Targeting (attributes, rules, cohorts, overrides): ``plans`` and ``vectors`` naming them by
#: key, each with ``attributes`` and the ``now`` overrides expire against; see
#: ``sdk/conformance/generate_targeting.py``.
TARGETING_VECTORS = VECTORS.with_name("targeting-v1.json")


def load_vectors() -> list[dict[str, Any]]:
    """Every vector of routing-v1.json, in file order."""
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    return vectors


def load_targeting() -> dict[str, Any]:
    """targeting-v1.json: ``now``, ``plans`` (snapshot entries) and ``vectors``."""
    data: dict[str, Any] = json.loads(TARGETING_VECTORS.read_text(encoding="utf-8"))
    return data
