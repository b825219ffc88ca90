"""The production server stack for benchmarks: a PostgreSQL database of the bench's own,
Django set up against it, and gunicorn WSGI workers serving the API (DEBUG off).

The same shape as ``bench/bench_server.py`` and docker/compose.yml, parametrised so each bench
uses its own database and port and can run beside the others.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def bench_env(db_name: str, redis_db: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": os.environ.get(
            "BENCH_DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{db_name}"
        ),
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{redis_db}"),
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-secret",
        "ALLOWED_HOSTS": "127.0.0.1",
        "TURNOUT_RATE_LIMIT_PER_KEY": "0",  # one key drives all the load here
        "LOG_LEVEL": "WARNING",
    }


def ensure_database(db_name: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db_name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{db_name}"')


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


def database_backends(db_name: str) -> list[int]:
    """PostgreSQL backend pids connected to a database now."""
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db_name,),
        ).fetchall()
    return [r[0] for r in rows]


@contextmanager
def gunicorn(
    env: dict[str, str], port: int, workers: int, threads: int
) -> Iterator[tuple[str, int]]:
    """gunicorn WSGI workers serving the API; yields the base URL and the master's pid."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "controlplane.wsgi:application",
            "-w", str(workers), "--threads", str(threads), "-b", f"127.0.0.1:{port}",
            "--log-level", "warning",
        ],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=15)
