"""The house's layering, checked over the import graph (ast, no import runs):

- the SDK imports nothing of the server;
- the pure cores (statistics, plan rules, phases, aggregation, on-call messages; the SDK's
  routing and comparison) import no Django, ORM, broker or network client, and from the
  server only other pure cores;
- capabilities depend downward only, in the order written in ``LAYERS``;
- no import circle among the server's modules, counting imports inside functions too (a
  lazy import is how the old tasks <-> shadow <-> engine <-> outbox circle hid).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ("migrations_app", "controlplane")

# Pure: numpy, scipy and the standard library only (STYLE.md: no ORM, no I/O, no clock read).
PURE = (
    "migrations_app.guardrails.stats",
    "migrations_app.guardrails.rules",
    "migrations_app.guardrails.rule_types",
    "migrations_app.guardrails.change_rules",
    "migrations_app.guardrails.confirmatory_look",
    "migrations_app.guardrails.recovery",
    "migrations_app.guardrails.segments",
    "migrations_app.plans.phases",
    "migrations_app.plans.holdout",
    "migrations_app.plans.preview",
    "migrations_app.outcomes.aggregation",
    "migrations_app.outcomes.exact_sums",
    "migrations_app.alerts.message",
    "migrations_app.alerts.oncall",
    "migrations_app.judge.calibration",
    "turnout.routing",
    "turnout.snapshot",
    "turnout.targeting",
    "turnout.compare",
    "turnout.judges",
    "turnout.checks",
    "migrations_app.plans.metric_specs",
    "turnout.contract",
    "migrations_app.replay.stats",
    "migrations_app.replay.metrics",
)
IMPURE_PACKAGES = (
    "django", "rest_framework", "celery", "kombu", "redis", "psycopg", "httpx", "requests",
    "urllib3", "openai", "anthropic", "google", "prometheus_client", "socket", "subprocess",
    "threading", "sqlite3",
)  # fmt: skip

# Capabilities, lowest first: a module may import from its own layer or a lower one (pure
# cores from anywhere). Packages not named here sit at the top (dashboard, api, admin, tasks,
# urls, views, apps, management, templatetags).
LAYERS: list[tuple[str, ...]] = [
    ("migrations_app.errors", "migrations_app.secret_policy", "migrations_app.models"),
    ("migrations_app.routing",),
    ("migrations_app.plans",),
    ("migrations_app.outcomes",),
    ("migrations_app.shadow",),
    ("migrations_app.judge",),
    ("migrations_app.alerts",),
    ("migrations_app.guardrails",),
    ("migrations_app.datasets",),
]
STANDALONE = ("migrations_app.simulator",)  # the provider simulator: nothing of the domain


def module_name(path: Path) -> str:
    parts = path.relative_to(
        ROOT if not path.is_relative_to(ROOT / "sdk/src") else ROOT / "sdk/src"
    )
    name = ".".join(parts.with_suffix("").parts)
    return name.removesuffix(".__init__")


def modules() -> dict[str, Path]:
    found = {}
    for base in ("migrations_app", "controlplane", "sdk/src/turnout"):
        for path in (ROOT / base).rglob("*.py"):
            if "migrations" in path.relative_to(ROOT).parts[1:2]:
                continue  # Django's schema migrations
            found[module_name(path)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, at any depth (``from a import b`` is a.b when a.b is a
    module), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join([*parts, *([child.module] if child.module else [])])
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    yield full if full in MODULES else base
            yield from walk(child)

    yield from walk(tree)


GRAPH = {name: set(imports(name, path)) for name, path in MODULES.items()}


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer(name: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if under(name, prefixes):
            return index
    return len(LAYERS)  # the interfaces on top


def test_the_sdk_imports_nothing_of_the_server() -> None:
    bad = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith("turnout")
        for target in targets
        if under(target, (*SERVER, "django", "rest_framework", "celery"))
    ]
    assert not bad, bad


def test_pure_cores_import_no_django_orm_or_io() -> None:
    bad = []
    for name, targets in GRAPH.items():
        if not under(name, PURE):
            continue
        for target in targets:
            if under(target, IMPURE_PACKAGES):
                bad.append(f"{name} imports {target}")
            elif under(target, SERVER) and not under(target, PURE):
                bad.append(f"{name} imports {target}, which is not pure")
    assert not bad, bad


def test_capabilities_depend_downward_only() -> None:
    bad = []
    for name, targets in GRAPH.items():
        if not under(name, ("migrations_app",)):
            continue
        for target in targets:
            if not under(target, ("migrations_app",)) or under(target, PURE):
                continue
            if under(name, STANDALONE) and not under(target, STANDALONE):
                bad.append(f"{name} imports {target} (the simulator stands alone)")
            elif layer(target) > layer(name):
                bad.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert not bad, bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_among_the_servers_modules() -> None:
    server = {
        name: {t for t in targets if under(t, ("migrations_app",)) and t != name}
        for name, targets in GRAPH.items()
        if under(name, ("migrations_app",))
    }
    # A package's __init__ re-exporting its submodules is not a circle with them.
    for name in list(server):
        server[name] = {t for t in server[name] if not name.startswith(t + ".")}
    assert not cycles(server), cycles(server)


def test_the_checks_see_the_house() -> None:
    """Guards against a check that passes because it reads nothing."""
    assert "migrations_app.guardrails.engine" in GRAPH
    assert "migrations_app.alerts.outbox" in GRAPH["migrations_app.guardrails.engine"]
    assert "turnout.routing" in GRAPH["migrations_app.routing.snapshots"]
    assert {"migrations_app.shadow.tasks"} <= GRAPH["migrations_app.shadow.samples"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
