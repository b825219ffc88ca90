"""The README and docs/architecture.md stay true to the tree (issue 19):

- every package under ``migrations_app/`` is named in the README's layout table (section
  "## Architecture");
- every module of every package is named in its package's block of docs/architecture.md's
  package map (top-level modules anywhere in the map);
- every route of the API's URLconf is in the README's API table (section "### The API") or
  in docs/contracts.md, with ``{name}`` for a path parameter.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.urls import URLPattern, URLResolver, get_resolver

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "migrations_app"
SKIP = {"migrations", "__pycache__"}


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    after = re.search(rf"\n#{{1,{len(level)}}} ", text[start + len(heading) + 2 :])
    return text[start : start + len(heading) + 2 + after.start()] if after else text[start:]


def fence(text: str) -> str:
    """The first ``` block of ``text``."""
    return text.split("```", 2)[1]


README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs/architecture.md").read_text()
CONTRACTS = (ROOT / "docs/contracts.md").read_text()
PACKAGE_MAP = fence(section(ARCHITECTURE, "## The packages of `migrations_app`, lowest first"))


def packages() -> list[Path]:
    return sorted(
        p
        for p in APP.rglob("*")
        if p.is_dir() and (p / "__init__.py").exists() and not SKIP & set(p.parts)
    )


def blocks(text: str, names: set[str]) -> dict[str, str]:
    """Each package's block of the map: from the line naming it (``name/``) to the next line
    that names a package for the first time."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        new = [n for n in re.findall(r"(?<![\w./])(\w+)/", line) if n in names and n not in found]
        if new:
            current = [*new]
            for n in new:
                found[n] = []
        for n in current:
            found[n].append(line)
    return {n: "\n".join(lines) for n, lines in found.items()}


def test_every_package_is_in_the_readme_layout_table() -> None:
    table = section(README, "## Architecture")
    missing = [
        str(p.relative_to(APP))
        for p in packages()
        if p != APP and p.parent == APP and f"`{p.name}/`" not in table
    ]
    assert not missing, f"README's Architecture section names no {missing}"


def test_every_module_is_in_its_package_block_of_the_architecture_map() -> None:
    pkgs = [p for p in packages() if p != APP]
    assert len({p.name for p in pkgs}) == len(pkgs), "package names must be unique for the map"
    found = blocks(PACKAGE_MAP, {p.name for p in pkgs})
    missing = []
    for pkg in pkgs:
        block = found.get(pkg.name)
        if block is None:
            missing.append(f"{pkg.relative_to(APP)}/")
            continue
        for module in sorted(pkg.glob("*.py")):
            if module.stem != "__init__" and not re.search(rf"\b{module.stem}\b", block):
                missing.append(str(module.relative_to(APP)))
    for module in sorted(APP.glob("*.py")):
        if module.stem != "__init__" and f"{module.name}" not in PACKAGE_MAP:
            missing.append(module.name)
    assert not missing, f"docs/architecture.md's package map names no {missing}"


def routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> list[str]:
    found = []
    for entry in patterns:
        text = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            found += routes(entry.url_patterns, text)
        else:
            found.append("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", text))
    return found


def test_every_api_route_is_in_the_readme_api_table_or_the_contracts() -> None:
    documented = section(README, "### The API") + CONTRACTS
    api = routes(get_resolver("migrations_app.urls").url_patterns)
    assert "/api/v1/plans/{key}/{action}" in api  # the parameters read as written in the docs
    missing = [r for r in api if not re.search(re.escape(r) + r"(?![\w{/-])", documented)]
    assert not missing, f"neither README's API table nor docs/contracts.md names {missing}"


def test_the_checks_catch_what_they_say() -> None:
    """The map's reading: a module named only in another package's block is missing."""
    text = " plans/  lifecycle.py\n         edits.py\n judge/  labels.py, edits\n"
    found = blocks(text, {"plans", "judge"})
    assert "edits" in found["plans"] and "labels" not in found["plans"]
    assert "lifecycle" not in found["judge"]
    assert section("x\n## A\none\n### B\ntwo\n## C\nthree", "## A") == "\n## A\none\n### B\ntwo"
