"""The production server stack for benchmarks: a PostgreSQL database of the bench's own,
Django set up against it, and gunicorn WSGI workers serving the API (DEBUG off).

The same shape as ``bench/bench_server.py`` and docker/compose.yml, parametrised so each bench
uses its own database and port and can run beside the others.

Every bench takes ``--smoke``: the same code path at a tiny size, run by the suite
(``tests/bench/test_benches.py``) so that a schema or API change that breaks a bench fails the
suite. Its figures mean nothing. ``BENCH_DATABASE_URL`` / ``BENCH_REDIS_URL`` move a bench to
another database or Redis (the suite gives each bench its own database).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SMOKE_HELP = "a tiny run of the same code path (the suite runs it); its figures mean nothing"


def database_url(db_name: str) -> str:
    """``BENCH_DATABASE_URL``, else a database of the bench's own on the local PostgreSQL."""
    return os.environ.get("BENCH_DATABASE_URL") or f"postgres://postgres@127.0.0.1:5432/{db_name}"


def redis_url(redis_db: int) -> str:
    return os.environ.get("BENCH_REDIS_URL") or f"redis://127.0.0.1:6379/{redis_db}"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def flush_redis(url: str) -> None:
    """Empty a bench's own Redis db (tasks an aborted run left queued). Never a Redis named by
    ``BENCH_REDIS_URL``: that one may hold someone else's data."""
    if os.environ.get("BENCH_REDIS_URL"):
        return
    import redis

    redis.Redis.from_url(url).flushdb()


def admin_url(url: str) -> str:
    """The same server's maintenance database: where a bench creates or drops its own."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_env(db_name: str, redis_db: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(db_name),
        "REDIS_URL": redis_url(redis_db),
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-secret",
        "ALLOWED_HOSTS": "127.0.0.1",
        "TURNOUT_RATE_LIMIT_PER_KEY": "0",  # one key drives all the load here
        "LOG_LEVEL": "WARNING",
    }


def ensure_database(url: str) -> None:
    """Create the database ``url`` names unless it exists (its tables are the bench's own)."""
    import psycopg

    name = database_name(url)
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"{_template()}')


def recreate_database(url: str) -> None:
    """Drop and create the database ``url`` names: a bench that builds its data from empty."""
    import psycopg

    name = database_name(url)
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"{_template()}')


def _template() -> str:
    """``BENCH_TEMPLATE_DATABASE``: a database already migrated to this tree's schema, copied
    instead of migrating a new one from empty (the suite's smoke runs make one for all the
    benches: ~20 s of migrations each under load). Migrate still runs after, a no-op then."""
    template = os.environ.get("BENCH_TEMPLATE_DATABASE", "")
    if not template:
        return ""
    if not template.replace("_", "").isalnum():
        raise ValueError(f"BENCH_TEMPLATE_DATABASE {template!r} is not a database name")
    return f' TEMPLATE "{template}"'


def setup_django(env: dict[str, str]) -> None:
    """Django in this process, against the bench database, migrated."""
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc): a gunicorn master's workers."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def database_backends(url: str) -> list[int]:
    """PostgreSQL backend pids connected to a database now."""
    import psycopg

    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database_name(url),),
        ).fetchall()
    return [r[0] for r in rows]


class Worker:
    """A Celery worker process under a node name of its own: a broadcast ping that another
    worker on the same broker answers does not count as this one's."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.name = f"bench-{uuid.uuid4().hex[:8]}@%h"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", *args,
             "-n", self.name, "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the worker answers a ping: it consumes from the queue from then on, so a
        bench's clock starts on a worker that is up, however long a loaded machine took to
        start it. Needs Django set up in this process (the Celery app reads its settings)."""
        from controlplane.celery import app

        node = self.name.replace("%h", socket.gethostname())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited with {self.proc.returncode}")
            if app.control.ping(destination=[node], timeout=0.5):
                return
        raise RuntimeError(f"the Celery worker did not answer a ping in {timeout:.0f} s")

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: a bench never leaves a process behind."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def gunicorn(
    env: dict[str, str], port: int, workers: int, threads: int
) -> Iterator[tuple[str, int]]:
    """The API as production serves it (controlplane/gunicorn.conf.py: its worker class, one
    listening socket per worker) with ``workers`` x ``threads``; yields the base URL and the
    master's pid."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "-c", "controlplane/gunicorn.conf.py",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning",
        ],
        cwd=ROOT,
        env={**env, "WEB_CONCURRENCY": str(workers), "WEB_THREADS": str(threads)},
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop_process(proc, timeout=15)
