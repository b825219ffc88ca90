"""``make run``: migrate, create the demo data, then run web (WSGI), the SDK stream server (ASGI),
Celery worker and Celery beat in the foreground. Ctrl-C (or SIGTERM) stops them all; if one dies,
the others are stopped too.

Stopping is bounded: each part gets SIGTERM and ``TURNOUT_STOP_TIMEOUT`` seconds (default 10) to
finish what it is doing (gunicorn and uvicorn have shorter deadlines of their own, so they
normally finish first), then everything left of it is killed, its own children included (a
gunicorn worker stuck in a request, a Celery pool process). A second Ctrl-C kills at once. Each
part runs in a process group of its own, which is what the final kill is aimed at, and is told
to stop by the kernel if the launcher itself is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 10.0
# The stream server's own deadline: an SSE connection never ends by itself, and SDKs reconnect
# (to the next server, or poll meanwhile), so open streams are not waited for.
STREAM_GRACE_SECONDS = 3
_PR_SET_PDEATHSIG = 1
# migrate, collectstatic, turnout_setup: in one Python, as three `manage.py` runs each paid
# Django's start (~1.4 s here) before doing almost nothing on a migrated database. The system
# checks run once, before migrate, as `manage.py migrate` ran them (call_command skips them).
_SETUP = (
    "import django; django.setup(); from django.core.management import call_command; "
    "call_command('migrate', interactive=False, verbosity=0, skip_checks=False); "
    "call_command('collectstatic', interactive=False, verbosity=0); "
    "call_command('turnout_setup')"
)


def stop_timeout(env: dict[str, str]) -> float:
    raw = env.get("TURNOUT_STOP_TIMEOUT", "").strip()
    if not raw:
        return STOP_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"TURNOUT_STOP_TIMEOUT={raw!r}: expected seconds") from None
    if not 0 <= value <= 600:
        raise SystemExit(f"TURNOUT_STOP_TIMEOUT={raw!r}: expected 0 to 600 seconds")
    return value


def address_in_use(host: str, port: int) -> str | None:
    """Why nothing could listen on ``host:port`` now, or None. The probe binds without
    SO_REUSEPORT, so it fails where another server listens, with SO_REUSEPORT or not: with
    ``reuse_port`` a second gunicorn on a port in use would otherwise share it silently (each
    server then answering a random share of the connections). SO_REUSEADDR lets it bind over
    the TIME_WAIT connections a server that just stopped leaves behind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _die_with(parent: int) -> None:
    """Runs in each child before it starts: SIGTERM when the launcher dies, however it dies
    (SIGKILL included), so that no part outlives it (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)


def exit_status(pid: int) -> int | None:
    """The child's exit status if it has exited (a signal's number negated), else None; it is
    not reaped: an unreaped child keeps its process group id reserved, so the final ``killpg``
    can never reach an unrelated group that took the id over."""
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 0
    if result is None:
        return None
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


def exited(pid: int) -> bool:
    return exit_status(pid) is not None


def stop_all(children: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each part, give them ``timeout`` seconds together, then SIGKILL each part's whole
    process group (what a part left behind, too), and reap."""
    for child in children.values():
        if not exited(child.pid):
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(exited(c.pid) for c in children.values()):
        time.sleep(0.1)
    for name, child in children.items():
        if not exited(child.pid):
            print(f"{name} still running after {timeout:g} s: killing it")
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the group is empty already
            pass
    for child in children.values():
        child.wait()


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DEBUG", "1")
    env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    host = env.get("TURNOUT_HOST", "127.0.0.1")
    port = env.get("TURNOUT_PORT", "8000")
    stream_port = env.get("TURNOUT_STREAM_PORT", str(int(port) + 1))
    # The API names the stream server in its config responses, so SDKs given only the API's
    # URL find it: on the host they reached the API by, at this port (TURNOUT_STREAM_URL, when
    # set, names it instead). A fixed URL on this bind address is unreachable from elsewhere
    # (a wildcard bind was advertised as 127.0.0.1).
    env["TURNOUT_STREAM_PORT"] = stream_port
    timeout = stop_timeout(env)
    # Before anything starts: a second `make run` (or another server) on these ports must not
    # start half a Turnout beside the first.
    for name, number in (("TURNOUT_PORT", port), ("TURNOUT_STREAM_PORT", stream_port)):
        problem = address_in_use(host, int(number))
        if problem:
            print(
                f"cannot listen on {host}:{number}: {problem}. Is Turnout (or another server) "
                f"already running there? Stop it, or set {name} to a free port.",
                file=sys.stderr,
            )
            return 1
    python = sys.executable
    data = Path(env.get("TURNOUT_DATA_DIR", ROOT / "var"))
    for sub in ("celery-queue", "celery-processed", "celery-control", "cache"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    print(
        "database:",
        env.get("DATABASE_URL") or f"SQLite at {data / 'turnout.sqlite3'} (DATABASE_URL unset)",
    )
    print("broker:  ", env.get("REDIS_URL") or f"filesystem queue in {data} (REDIS_URL unset)")
    subprocess.run([python, "-c", _SETUP], cwd=ROOT, env=env, check=True)
    celery = [python, "-m", "celery", "-A", "controlplane"]
    commands = {
        # Request/response traffic on WSGI workers: Django's ASGI path costs ~1 ms a request in
        # middleware thread hops. The SSE stream holds connections open, so it runs on ASGI.
        "web": [
            python,
            "-m",
            "gunicorn",
            # Workers, threads, the graceful stop deadline: controlplane/gunicorn.conf.py
            # (WEB_* variables).
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
            "--timeout-graceful-shutdown",
            str(STREAM_GRACE_SECONDS),
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
    launcher = os.getpid()
    children = {
        # A process group each: Ctrl-C reaches the launcher only (the terminal signals its
        # foreground group), which stops the parts in order and can then kill a part's whole
        # group, workers and pool processes included.
        name: subprocess.Popen(
            cmd, cwd=ROOT, env=env, process_group=0, preexec_fn=lambda: _die_with(launcher)
        )
        for name, cmd in commands.items()
    }
    print(
        f"Turnout is up: admin at http://{host}:{port}/admin/, SDK stream at http://{host}:{stream_port}"
    )
    print("Ctrl-C stops web, stream, worker and beat.")
    signals = 0

    def stop(*_: object) -> None:
        nonlocal signals
        signals += 1

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not signals:
        for name, child in children.items():
            status = exit_status(child.pid)
            if status is not None:
                print(f"{name} exited with {status}; stopping the others")
                code = status or 1
                signals = 1
                break
        time.sleep(0.3)
    print(f"stopping (at most {timeout:g} s; Ctrl-C again to kill now)")

    def hurry(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, hurry)
    signal.signal(signal.SIGTERM, hurry)
    try:
        stop_all(children, timeout)
    except KeyboardInterrupt:
        stop_all(children, 0.0)
    return code


if __name__ == "__main__":
    sys.exit(main())
