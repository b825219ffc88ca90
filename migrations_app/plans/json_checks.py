"""Text PostgreSQL cannot store, anywhere in a plan's values: a NUL (text and jsonb refuse it)
or a lone surrogate (not UTF-8: the driver cannot even send it). Found by path, so the plan
validation names the field (``control.params.stop[0]``) instead of the database failing."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

# PostgreSQL text cannot hold NUL, and a lone surrogate (valid in JSON's \ud800) has no UTF-8.
UNSTORABLE_CHARS = "\x00\ud800-\udfff"  # a regex character class's body
UNSTORABLE = re.compile(f"[{UNSTORABLE_CHARS}]")


def unstorable(text: str) -> bool:
    """Whether ``text`` holds a NUL or a lone surrogate."""
    return UNSTORABLE.search(text) is not None


def unstorable_paths(value: Any, path: str) -> Iterator[str]:
    """The paths (``path`` first, ``""`` for the value itself) of the strings in ``value`` - a
    string, or mappings and lists at any depth, keys included - that hold a NUL or a lone
    surrogate; a bad key is named by its object's path (before that object's values), items as
    ``name[i]``. Walked with a stack of its own (no recursion)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if unstorable(item):
                yield where
        elif isinstance(item, Mapping):
            children = []
            for key, child in item.items():
                if isinstance(key, str) and unstorable(key):
                    yield where
                    continue
                children.append((child, f"{where}.{key}" if where else str(key)))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}[{i}]") for i, child in reversed(list(enumerate(item))))


def whole_number(text: str | None, maximum: int) -> int | None:
    """``text`` as an integer from 0 to ``maximum`` when it is 1 to 18 ASCII digits, else None.
    ``str.isdigit`` is not that check: '²' and other Unicode digits pass it and fail ``int``
    (a ValueError, a 500), and thousands of digits make ``int`` slow."""
    if not text or len(text) > 18 or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= maximum else None
