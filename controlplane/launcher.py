"""``make run``: migrate, create the demo data, then run web (WSGI), the SDK stream server (ASGI),
Celery worker and Celery beat in the foreground. Ctrl-C (or SIGTERM) stops them all; if one dies, the others are stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    host = env.get("TURNOUT_HOST", "127.0.0.1")
    port = env.get("TURNOUT_PORT", "8000")
    stream_port = env.get("TURNOUT_STREAM_PORT", str(int(port) + 1))
    python = sys.executable
    data = Path(env.get("TURNOUT_DATA_DIR", ROOT / "var"))
    for sub in ("celery-queue", "celery-processed", "celery-control", "cache"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    print(
        "database:",
        env.get("DATABASE_URL") or f"SQLite at {data / 'turnout.sqlite3'} (DATABASE_URL unset)",
    )
    print("broker:  ", env.get("REDIS_URL") or f"filesystem queue in {data} (REDIS_URL unset)")
    for step in (
        ["migrate", "--noinput", "-v0"],
        ["collectstatic", "--noinput", "-v0"],
        ["turnout_setup"],
    ):
        subprocess.run([python, "manage.py", *step], cwd=ROOT, env=env, check=True)
    celery = [python, "-m", "celery", "-A", "controlplane"]
    commands = {
        # Request/response traffic on WSGI workers: Django's ASGI path costs ~1 ms a request in
        # middleware thread hops. The SSE stream holds connections open, so it runs on ASGI.
        "web": [
            python,
            "-m",
            "gunicorn",
            # Workers, threads and the rest: controlplane/gunicorn.conf.py (WEB_* variables).
            "-c",
            "controlplane/gunicorn.conf.py",
            "-b",
            f"{host}:{port}",
        ],
        "stream": [
            python,
            "-m",
            "uvicorn",
            "controlplane.asgi:application",
            "--host",
            host,
            "--port",
            stream_port,
            "--no-access-log",
        ],
        # CELERY_WORKER_POOL=threads suits work that waits on the network (shadow calls): an
        # engine evaluation then never queues behind a busy process (make demo uses it).
        "worker": [
            *celery,
            "worker",
            "--loglevel",
            "INFO",
            "--pool",
            env.get("CELERY_WORKER_POOL", "prefork"),
            "--concurrency",
            env.get("CELERY_WORKER_CONCURRENCY", "2"),
        ],
        "beat": [
            *celery,
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(data / "celerybeat-schedule"),
        ],
    }
    children = {name: subprocess.Popen(cmd, cwd=ROOT, env=env) for name, cmd in commands.items()}
    print(
        f"Turnout is up: admin at http://{host}:{port}/admin/, SDK stream at http://{host}:{stream_port}"
    )
    print("Ctrl-C stops web, stream, worker and beat.")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited with {child.returncode}; stopping the others")
                code = child.returncode or 1
                stopping = True
        time.sleep(0.3)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
