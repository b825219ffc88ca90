"""Every test that starts a process is marked ``live``, so that ``make test-fast`` (``-m "not
live and not slow"``) runs none and stays an edit-test loop. Checked on the source, not at run
time: a test that forgot the mark is found whether or not it runs.

A test starts processes when its body, a helper it calls or a fixture it takes (followed
through other helpers and fixtures: names resolved as Python and pytest resolve them, the
module's own definitions, ``from tests... import``, and fixtures from the module and the
conftest.py files above it) calls ``subprocess``, ``os.fork`` and the like, ``multiprocessing``,
or launches a browser.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: Calls that start a process, as (module, attribute): ``module.attribute(...)``, or a bare
#: ``attribute(...)`` imported from that module.
SPAWNING_CALLS = {
    ("subprocess", "Popen"), ("subprocess", "run"), ("subprocess", "call"),
    ("subprocess", "check_call"), ("subprocess", "check_output"),
    ("os", "fork"), ("os", "forkpty"), ("os", "system"), ("os", "popen"),
    ("os", "posix_spawn"), ("os", "posix_spawnp"), ("os", "execv"), ("os", "execvp"),
    ("multiprocessing", "Process"), ("multiprocessing", "Pool"),
    ("asyncio", "create_subprocess_exec"), ("asyncio", "create_subprocess_shell"),
    ("playwright.sync_api", "sync_playwright"), ("playwright.async_api", "async_playwright"),
}  # fmt: skip

Key = tuple[Path, str]  # (module file, top-level name or Class::method)


@dataclass
class Unit:
    """A top-level function, fixture or class, or a test method, in a file under tests/."""

    key: Key
    spawns: bool
    names: set[str] = field(default_factory=set)  # plain names it uses
    fixtures: set[str] = field(default_factory=set)  # parameters and requested fixtures
    marked_live: bool = False
    is_test: bool = False


@dataclass
class Module:
    path: Path
    imports: dict[str, str]  # local name -> "module.name"
    units: list[Unit]


def _is_live_mark(node: ast.expr) -> bool:
    """``pytest.mark.live`` (called or not), alone or in a list."""
    if isinstance(node, ast.List | ast.Tuple):
        return any(_is_live_mark(item) for item in node.elts)
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Attribute) and node.attr == "live"


def _pytestmark_live(body: list[ast.stmt]) -> bool:
    return any(
        isinstance(stmt, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets)
        and _is_live_mark(stmt.value)
        for stmt in body
    )


def _imports(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
    return names


def _spawns(node: ast.AST, imports: dict[str, str]) -> bool:
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if (imports.get(func.value.id, func.value.id), func.attr) in SPAWNING_CALLS:
                return True
        elif isinstance(func, ast.Name):
            module, _, name = imports.get(func.id, "").rpartition(".")
            if (module, name) in SPAWNING_CALLS:
                return True
    return False


def _fixtures(node: ast.AST) -> set[str]:
    """The fixtures a function takes: parameters, ``request.getfixturevalue("x")`` and
    ``@pytest.mark.usefixtures("x")``."""
    found: set[str] = set()
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        found |= {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in ("getfixturevalue", "usefixtures"):
            found |= {
                a.value
                for a in call.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            }
    return found


def _unit(path: Path, name: str, node: ast.AST, imports: dict[str, str], **kw: bool) -> Unit:
    return Unit(
        key=(path, name),
        spawns=_spawns(node, imports),
        names={n.id for n in ast.walk(node) if isinstance(n, ast.Name)},
        fixtures=_fixtures(node),
        **kw,
    )


def _module(path: Path) -> Module:
    tree = ast.parse(path.read_text(), filename=str(path))
    imports = _imports(tree)
    live = _pytestmark_live(tree.body)
    units = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            marked = live or any(_is_live_mark(d) for d in node.decorator_list)
            is_test = node.name.startswith("test")
            units.append(_unit(path, node.name, node, imports, marked_live=marked, is_test=is_test))
        elif isinstance(node, ast.ClassDef):
            class_live = (
                live
                or _pytestmark_live(node.body)
                or any(_is_live_mark(d) for d in node.decorator_list)
            )
            units.append(_unit(path, node.name, node, imports))  # the class, as a helper
            if node.name.startswith("Test"):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        if item.name.startswith("test"):
                            marked = class_live or any(
                                _is_live_mark(d) for d in item.decorator_list
                            )
                            units.append(
                                _unit(path, f"{node.name}::{item.name}", item, imports,
                                      marked_live=marked, is_test=True)
                            )  # fmt: skip
    return Module(path, imports, units)


def _module_path(root: Path, dotted: str) -> Path:
    """``tests.a.b`` -> root/a/b.py (``root`` stands for the ``tests`` package)."""
    return root.joinpath(*dotted.split(".")[1:]).with_suffix(".py")


def unmarked_process_tests(root: Path = TESTS) -> list[str]:
    modules = {p: _module(p) for p in sorted(root.rglob("*.py"))}
    units = {u.key: u for m in modules.values() for u in m.units}

    def defined(module: Module, name: str) -> Iterator[Key]:
        """Where ``name`` comes from in ``module``: its own definition, or an import from tests."""
        if (module.path, name) in units:
            yield module.path, name
        elif module.imports.get(name, "").startswith(root.name + "."):
            dotted, _, attr = module.imports[name].rpartition(".")
            yield _module_path(root, dotted), attr

    def resolve(module: Module, unit: Unit) -> Iterator[Key]:
        for name in unit.names:
            yield from defined(module, name)
        for name in unit.fixtures:  # the module's own (or imported) fixture, else a conftest's
            own = list(defined(module, name))
            if own:
                yield from own
                continue
            for where in (d / "conftest.py" for d in module.path.parents):
                if (where, name) in units:
                    yield where, name
                    break
                if where.parent == root:
                    break

    edges = {u.key: set(resolve(modules[u.key[0]], u)) for m in modules.values() for u in m.units}
    spawning = {key for key, u in units.items() if u.spawns}
    changed = True
    while changed:  # helpers and fixtures that use a spawning one spawn too
        changed = False
        for key, uses in edges.items():
            if key not in spawning and uses & spawning:
                spawning.add(key)
                changed = True
    return sorted(
        f"{path.relative_to(root.parent)}::{name}"
        for (path, name), u in units.items()
        if u.is_test and not u.marked_live and (path, name) in spawning
    )


def test_every_test_that_starts_processes_is_marked_live() -> None:
    assert unmarked_process_tests() == []


def test_the_check_finds_unmarked_tests_through_fixtures_and_helpers(tmp_path: Path) -> None:
    root = tmp_path / "tests"
    (root / "sub").mkdir(parents=True)
    (root / "conftest.py").write_text(
        "import subprocess\nimport pytest\n\n"
        "def start():\n    return subprocess.Popen(['true'])\n\n"
        "@pytest.fixture\ndef server():\n    yield start()\n\n"
        "@pytest.fixture\ndef calm():\n    yield 1\n"
    )
    (root / "helpers.py").write_text("import os\n\ndef fork_one():\n    return os.fork()\n")
    (root / "sub" / "test_x.py").write_text(
        "import pytest\nfrom subprocess import run\nfrom tests.helpers import fork_one\n\n"
        "def test_via_fixture(server):\n    pass\n\n"
        "def test_via_helper():\n    fork_one()\n\n"
        "def test_run():\n    run(['true'])\n\n"
        "def test_requested(request):\n    request.getfixturevalue('server')\n\n"
        "@pytest.mark.live\ndef test_marked(server):\n    pass\n\n"
        "def test_calm(calm):\n    assert calm\n\n"
        "def run_report():\n    pass\n\n"
        "def test_same_name_elsewhere():\n    run_report()\n"
    )
    (root / "sub" / "test_y.py").write_text(
        "import pytest\npytestmark = [pytest.mark.live]\n\ndef test_module_marked(server):\n"
        "    pass\n"
    )
    (root / "processes.py").write_text(
        "import subprocess\nimport pytest\n\n@pytest.fixture\ndef worker():\n"
        "    yield subprocess.Popen(['true'])\n"
    )
    (root / "sub" / "test_z.py").write_text(
        "from tests.processes import worker\n\ndef test_imported_fixture(worker):\n    pass\n"
    )

    found = unmarked_process_tests(root)

    assert [f.rsplit("::", 1)[1] for f in found] == [
        "test_requested", "test_run", "test_via_fixture", "test_via_helper",
        "test_imported_fixture",
    ]  # fmt: skip
