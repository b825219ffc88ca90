"""Every script in bench/ keeps running: each one's ``--smoke`` mode, a tiny run of the same code
path, as a process against the real PostgreSQL and Redis. A schema or API change that breaks a
bench (as the outcome table's ``fallback`` column once broke bench_ingest's COPY baseline) fails
here instead of when someone next tries to reproduce a README figure.

Each bench gets a database of its own, named after the suite's and dropped afterwards (a copy
of one the module migrated once, not migrated from empty each time), and a
Redis server of this module's own (the benches' workers, queues and caches stay out of the
suite's Redis; the suite's is the fallback where redis-server is not installed, and a bench
never flushes a Redis it is given). The figures a smoke run prints mean nothing and are not
checked; that it got to its result line is.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings

from tests.conftest import ARTIFACTS, ROOT
from tests.processes import RedisServer

pytestmark = pytest.mark.live

BENCH = ROOT / "bench"
#: A bound on a wait that must end (a bench stuck on a dead worker fails instead of hanging the
#: suite); the benches take seconds each.
STUCK_AFTER_S = 240

#: Each bench script, what it needs, and a line its smoke run prints once it has its result.
BENCHES = {
    "bench_alerts": ("postgres+redis", "rollback commit -> webhook received"),
    "bench_dashboard": ("postgres", "server time over"),
    "bench_decide": ("", "turnout decide():"),
    "bench_engine": ("postgres+redis", "celery cycle"),
    "bench_ingest": ("postgres+redis", "POST /api/v1/outcomes"),
    "bench_quality": ("", "8 metric guardrails"),
    "bench_replay": ("postgres+redis", "replay page,"),
    "bench_report": ("", "turnout report():"),
    "bench_rollback": ("postgres+redis", "median over"),
    "bench_segments": ("", "with segments:"),
    "bench_server": ("postgres+redis", "propagation to"),
    "bench_shadow": ("postgres+redis", "concurrent / baseline"),
    "bench_stats": ("", "one evaluation"),
}


def test_every_bench_script_has_a_smoke_run() -> None:
    scripts = {p.stem for p in BENCH.glob("bench_*.py")}

    assert scripts == set(BENCHES)


def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if urlsplit(url).scheme in ("postgres", "postgresql") else None


@pytest.fixture
def bench_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a database for one bench, beside the suite's on the same server."""
    base = _postgres_url()
    assert base is not None
    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/')}_smoke_{request.node.callspec.id}"
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def bench_template() -> Iterator[str]:
    """A database migrated once for the module, that each bench's database is copied from
    (bench/_stack.py's BENCH_TEMPLATE_DATABASE) instead of being migrated from empty."""
    base = _postgres_url()
    assert base is not None
    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/')}_smoke_template"
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": url, "DEBUG": "1"}, check=True,
    )  # fmt: skip
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def bench_redis() -> Iterator[str | None]:
    """A Redis URL for the benches: a server of the module's own, else the suite's."""
    if shutil.which("redis-server") is None:
        yield settings.REDIS_URL
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.stop()


def run_smoke(script: str, env: dict[str, str]) -> str:
    """``python bench/<script>.py --smoke``; its output (also in test-artifacts/). In a session
    of its own, so that a stuck run is killed with every server and worker it started."""
    ARTIFACTS.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / f"{script}.py"), "--smoke"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=STUCK_AFTER_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        output += f"\n[killed: still running after {STUCK_AFTER_S} s]"
    (ARTIFACTS / f"{script}-smoke.log").write_text(output)
    assert proc.returncode == 0, f"{script} --smoke exited {proc.returncode}:\n{output[-6000:]}"
    return output


@pytest.mark.parametrize("script", sorted(BENCHES), ids=lambda s: s.removeprefix("bench_"))
def test_bench_smoke_run(script: str, request: pytest.FixtureRequest) -> None:
    needs, result_line = BENCHES[script]
    env = dict(os.environ)
    if "postgres" in needs:
        if _postgres_url() is None:
            pytest.skip("this bench needs PostgreSQL (DATABASE_URL)")
        env["BENCH_DATABASE_URL"] = request.getfixturevalue("bench_database")
        env["BENCH_TEMPLATE_DATABASE"] = request.getfixturevalue("bench_template")
    if "redis" in needs:
        redis_url = request.getfixturevalue("bench_redis")
        if not redis_url:
            pytest.skip("this bench needs Redis (REDIS_URL, or redis-server installed)")
        env["BENCH_REDIS_URL"] = redis_url

    output = run_smoke(script, env)

    assert result_line in output, output[-6000:]
