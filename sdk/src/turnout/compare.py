"""Comparing a candidate's answer with the control's: pure functions, no network, no model.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_json(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` is JSON, tolerating one Markdown code fence around it
    (models often wrap JSON in one even when told not to); ``(False, None)`` otherwise."""
    match = _FENCE.match(text)
    body = match.group(1) if match else text
    try:
        return True, json.loads(body)
    except ValueError:
        return False, None
