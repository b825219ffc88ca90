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


def load_vectors() -> list[dict[str, Any]]:
    """Every vector of routing-v1.json, in file order."""
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    return vectors
