"""Shared fixtures: catalog data, users, and real processes (web server, Celery worker)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test.utils import override_settings
from hypothesis import HealthCheck, settings

# Property tests without a clock: no per-example deadline and no "too slow" health check (both
# measure wall time, which a busy machine stretches), and the same examples on every run.
settings.register_profile(
    "turnout", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("turnout")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def _worker() -> tuple[int, int]:
    """(this pytest-xdist worker's index, the number of workers); (0, 1) without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return (int(worker.removeprefix("gw")), count) if worker.startswith("gw") else (0, 1)


# Below Linux's ephemeral range (32768-60999), so no outgoing connection holds a port we pick.
PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A port free now. Under xdist each worker takes only ports of its own residue (port mod
    the worker count), so that two workers never pick the same one before either listens.

    Ports are tried by number from a random start: asking the kernel for port 0 and keeping
    the ones of our residue never ends for worker 0 of 2, as Linux hands bind() odd ports
    first (even ones are left for connect())."""
    index, count = _worker()
    start = random.randrange(len(PORTS))
    for offset in range(len(PORTS)):
        port = PORTS[(start + offset) % len(PORTS)]
        if port % count != index:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {PORTS}")


def worker_redis_url(url: str, index: int) -> str:
    """The suite's Redis URL for xdist worker ``index``: worker 0 keeps the database number,
    the others count down from it (15 -> 14, ...), modulo Redis' 16 databases."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base - index) % 16}"))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config, specs: list[Any]) -> None:
    """Each xdist worker its own Redis database: tests and the servers and Celery workers
    they start share queues, caches and locks through it (the routing-change channel's name
    carries the number too). Set in the worker's environment before it starts, as the
    settings read REDIS_URL before any conftest runs; the test database gets its _gwN
    suffix from pytest-django."""
    url = os.environ.get("REDIS_URL")
    if not url:
        return
    for spec in specs:
        spec.env["REDIS_URL"] = worker_redis_url(url, int(spec.id.removeprefix("gw")))


#: A test's rough cost by its marks, to order the files under pytest-xdist (below): a `slow`
#: simulation takes tens of seconds, a `live` test (processes started) several, any other a
#: fraction of one.
_MARK_COST = {"slow": 30.0, "live": 8.0}
_PLAIN_COST = 0.2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the files with the longest tests first. ``--dist loadfile`` hands
    a worker a whole file at a time, in the order collected (``--no-loadscope-reorder``: by
    default it orders files by their number of tests, which put the few-but-long simulation
    and demo files last, and one of them kept a worker busy for minutes after the other had
    run out of files). Longest first, the many short files even the workers out at the end.
    Runs after pytest-django's ordering; a file's own tests keep their order (a stable sort
    by file)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    cost: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        marks = [_MARK_COST[m.name] for m in item.iter_markers() if m.name in _MARK_COST]
        cost[path] = cost.get(path, 0.0) + max(marks, default=_PLAIN_COST)
    items.sort(key=lambda item: -cost[item.nodeid.split("::", 1)[0]])


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a server or worker that must see the test database."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DEBUG"] = "1"
    env["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    if db["ENGINE"].endswith("postgresql"):
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        env["DATABASE_URL"] = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    env.update(extra or {})
    return env


# How long an SDK client in a live test waits for its first snapshot (the SDK's own default is
# 2 s), and then for the plans it is about: under the suite's load a live server can take longer
# than that to answer, and a server process follows routing changes within about a second
# (Redis pub/sub, or its poll of the database), so a client made right after a plan started
# can get the snapshot before it (the change then comes on the stream). Such a client served
# every decision from control: a shadow test saw no shadow decision (assert 10 < 0), a judge
# test no plan at all (KeyError), in fresh-clone runs on a slow machine, 2026-12-05.
START_WAIT = 30.0


def sdk_client(url: str, api_key: str, *plan_keys: str, **options: Any) -> Any:
    """A ``turnout.Client`` whose snapshot holds ``plan_keys`` at their current versions. The
    server is asked first (a polling client, ``stream=False``, would not ask again for a
    while), then the client's own snapshot is waited for (another server process may still
    serve the one before)."""
    import httpx
    import turnout

    from migrations_app.models import MigrationPlan

    versions = dict(MigrationPlan.objects.filter(key__in=plan_keys).values_list("key", "version"))
    assert set(versions) == set(plan_keys), f"no plan {set(plan_keys) - set(versions)}"

    def served() -> bool:
        answer = httpx.get(
            f"{url}/api/v1/sdk/config", headers={"Authorization": f"Bearer {api_key}"}, timeout=5
        )
        plans = (
            {p["key"]: p["version"] for p in answer.json()["plans"]} if answer.is_success else {}
        )
        return versions.items() <= plans.items()

    assert eventually(served, timeout=START_WAIT), f"the server never served {versions}"
    client = turnout.Client(url, api_key, **{"start_wait": START_WAIT, **options})

    def current() -> bool:
        plans = client.snapshot.plans
        return all(key in plans and plans[key].version == v for key, v in versions.items())

    if not eventually(current, timeout=START_WAIT):
        client.close()
        raise AssertionError(f"the client's snapshot never held {versions}")
    return client


def eventually(check: Callable[[], bool], timeout: float = 10.0, every: float = 0.02) -> bool:
    """Whether ``check`` holds within ``timeout`` seconds: a bounded wait for something that
    must happen, so that a broken path fails the test instead of hanging it (no speed is
    asserted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


def wait_for(
    condition: Callable[[], bool], state: Callable[[], object] = lambda: None, timeout: float = 60.0
) -> None:
    """Wait for something a worker or server must do, then go on; fail with what ``state()``
    says when it has not happened within ``timeout`` seconds (patience, not a speed limit)."""
    assert eventually(condition, timeout=timeout, every=0.05), f"gave up waiting: {state()}"


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts, each in a session of its own (``start_new_session=True``):
    whatever is still running at teardown is killed with its process group."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait()


@contextmanager
def celery_process(
    *args: str, log_name: str, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A controlplane <args>`` against the test database, logged to test-artifacts."""
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / log_name, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", *args, "--loglevel", "INFO"],
            cwd=ROOT,
            env=subprocess_env(extra_env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            stop(proc)


@pytest.fixture
def celery_worker_process(transactional_db: None) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker on the real broker, against the test database."""
    with celery_process(
        "worker", "--concurrency", "2", "--pool", "threads", "--without-gossip",
        "--without-mingle", log_name="celery-worker.log",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture
def celery_beat_process(
    transactional_db: None, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Real Celery beat, scheduling the engine every second (TURNOUT_EVALUATION_INTERVAL=1)."""
    with celery_process(
        "beat", "--schedule", str(tmp_path / "beat-schedule"), log_name="celery-beat.log",
        extra_env={"TURNOUT_EVALUATION_INTERVAL": "1"},
    ) as proc:  # fmt: skip
        yield proc


class LiveServer:
    """The production server stack (uvicorn, ASGI) in a subprocess, against the test database."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(ARTIFACTS / "web.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                # The whole app (API and stream on one port); the stream server's own entry
                # point, controlplane.asgi:application, serves the stream path only.
                "controlplane.asgi:django_application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                # Open SSE streams would hold a graceful shutdown for its whole default wait.
                "--timeout-graceful-shutdown",
                "1",
            ],
            cwd=ROOT,
            env=subprocess_env(extra_env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()


@pytest.fixture
def live_server_factory(transactional_db: None) -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(extra_env: dict[str, str] | None = None) -> LiveServer:
        servers.append(LiveServer(extra_env))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.stop()


@pytest.fixture
def live_server_process(live_server_factory: Any) -> str:
    return str(live_server_factory().url)


def _flush_by_delete(
    self: Any, style: Any, tables: list[str], *, reset_sequences: bool = False,
    allow_cascade: bool = False,
) -> list[str]:  # fmt: skip
    """PostgreSQL's flush as one DELETE a table (in the flush's one transaction, the foreign
    keys deferred) instead of one TRUNCATE of them all: the same empty tables, but a TRUNCATE
    makes new files for every table and index, about a second a transactional test on this
    machine's PostgreSQL against a few milliseconds of DELETEs on the handful of rows a test
    leaves. The content types and permissions stay: the flush's post_migrate signal writes the
    same rows back (it still adds any missing), and reading them is half the cost of writing.
    A flush that resets sequences keeps Django's TRUNCATE ... RESTART IDENTITY."""
    if reset_sequences or allow_cascade or not tables:
        return _truncate_flush(self, style, tables, reset_sequences=reset_sequences,
                               allow_cascade=allow_cascade)  # fmt: skip
    return ["SET CONSTRAINTS ALL DEFERRED;"] + [
        f"DELETE FROM {self.quote_name(table)};" for table in tables if table not in _REWRITTEN
    ]


_REWRITTEN = {"django_content_type", "auth_permission"}


_truncate_flush: Any = None


@pytest.fixture(scope="session", autouse=True)
def _fast_flush() -> Iterator[None]:
    """Transactional tests empty the tables after each test (TransactionTestCase's flush):
    by DELETE rather than TRUNCATE on PostgreSQL (_flush_by_delete)."""
    global _truncate_flush
    from django.db.backends.postgresql.operations import DatabaseOperations

    _truncate_flush = DatabaseOperations.sql_flush
    DatabaseOperations.sql_flush = _flush_by_delete  # type: ignore[method-assign]
    try:
        yield
    finally:
        DatabaseOperations.sql_flush = _truncate_flush  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """The test database commits without waiting for its WAL to reach the disk
    (synchronous_commit off, set on the database: the servers and workers the live tests
    start connect with it too): ~2.5 ms of fsync a commit on this machine, and the live tests,
    the transactional tests' flushes and the catalog put back after them commit thousands of
    times. What a commit makes visible, and when, is unchanged; only a crash of PostgreSQL
    itself could lose the last commits, and no test crashes it."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        name = connection.ops.quote_name(connection.settings_dict["NAME"])
        cursor.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
        cursor.execute("SET synchronous_commit = off")


class OneIterationPBKDF2(PBKDF2PasswordHasher):
    """Django's PBKDF2-SHA256 at one iteration (see _cheap_passwords)."""

    iterations = 1


@pytest.fixture(scope="session", autouse=True)
def _cheap_passwords() -> Iterator[None]:
    """Users the tests create (tests/factories.make_user, behind nearly every plan) get a
    one-iteration PBKDF2 hash instead of Django's 1,000,000 iterations: ~0.24 s of CPU for
    each user a test creates, the largest cost of many plain tests. Still PBKDF2-SHA256 with
    its iteration count in the stored hash, so the servers and workers the live tests start,
    on the default hashers, verify these passwords too (the browser tests log in)."""
    from django.conf import settings

    hashers = [f"{__name__}.OneIterationPBKDF2", *settings.PASSWORD_HASHERS]
    with override_settings(PASSWORD_HASHERS=hashers):
        yield


@pytest.fixture(scope="session", autouse=True)
def _prompt_listener() -> Iterator[None]:
    """The follower's Redis listener checks for close() between reads of LISTEN_WAIT (0.5 s),
    and _stop_following's close() waits for it: ~0.25 s of every test that served decisions.
    A 0.05 s read in the tests' own process (the servers and workers they start keep 0.5 s);
    what the listener does with a message is the same."""
    from migrations_app.routing import changes

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(changes, "LISTEN_WAIT", 0.05)
        yield


@pytest.fixture(autouse=True)
def _stop_following() -> Iterator[None]:
    """A test that served decisions in this process started the routing-change follower, whose
    poller holds a database connection of its own: stopped after the test, as the test
    database must be free to drop at the end (and is flushed between tests)."""
    yield
    changes = sys.modules.get("migrations_app.routing.changes")
    if changes is not None:
        changes.stop_following()


def _reseed(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """The rows the schema migrations seed (the catalog, the plan templates), put back after
    a flush (its post_migrate signal): a transactional test's flush empties the tables, and
    the tests after it - under pytest-xdist a file's plain tests run after the previous file's
    transactional ones - find the database as migrated."""
    if sender.label != "migrations_app":
        return
    from django.db import transaction

    from migrations_app.plans.catalog import seed_catalog
    from migrations_app.plans.templates import seed_templates

    with transaction.atomic(using=using):  # one routing change for the whole catalog
        seed_catalog()
    seed_templates()


@pytest.fixture(scope="session", autouse=True)
def _catalog() -> Iterator[None]:
    """Transactional tests flush the tables, the seeded catalog with them: put back by the
    flush itself (_reseed), before any other test runs."""
    from django.db.models.signals import post_migrate

    post_migrate.connect(_reseed, dispatch_uid="tests-reseed")
    try:
        yield
    finally:
        post_migrate.disconnect(dispatch_uid="tests-reseed")
