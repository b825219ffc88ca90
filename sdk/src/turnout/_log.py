"""The SDK's logger, and a warning that is said once: the client's parts run inside the host
application, whose logs a bad call in a hot loop must not flood."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("turnout")


class LogOnce:
    """Warn the first time a given problem happens, then stay quiet."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warning(self, key: str, message: str, *args: Any) -> None:
        if key in self._seen or len(self._seen) > 1000:
            return
        self._seen.add(key)
        log.warning(message, *args)
