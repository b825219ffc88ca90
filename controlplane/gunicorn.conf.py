"""gunicorn settings for the API (``gunicorn -c controlplane/gunicorn.conf.py``).

One file for ``make run``, docker and the benchmarks, driven by the environment like the
Django settings: production differs only in environment variables. Measured choices (2-core
machine, load generator on the same cores; bench/bench_server.py): see the README.

WEB_BIND         address to listen on (default 127.0.0.1:8000; ``-b`` overrides it)
WEB_CONCURRENCY  worker processes (default 2: one per core)
WEB_THREADS      threads per worker (default 2)
WEB_KEEPALIVE    seconds a kept-alive connection may stay idle (default 5)
WEB_REUSE_PORT   one listening socket per worker (default 1; 0: one shared socket)
WEB_GRACEFUL_TIMEOUT  seconds a stopping worker may finish its requests before it is
                 killed (default 5; requests here take milliseconds)
WEB_READ_TIMEOUT seconds a request may take to arrive whole from its first byte before its
                 connection is closed (default 30; controlplane/web_worker.py)
"""

from __future__ import annotations

import gc
import os
from typing import Any


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value}: expected at least {minimum}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name}={raw!r}: expected 1 or 0")


wsgi_app = "controlplane.wsgi:application"
bind = [os.environ.get("WEB_BIND", "127.0.0.1:8000")]
workers = _int("WEB_CONCURRENCY", 2, 1)
# gthread, with each request read whole before a thread takes it: a slow or stalled client
# (slowloris) holds a socket in the poller, not a thread (controlplane/web_worker.py).
worker_class = "controlplane.web_worker.ThreadWorker"
threads = _int("WEB_THREADS", 2, 1)
keepalive = _int("WEB_KEEPALIVE", 5, 0)
# Plenty of kept-alive client connections per worker: they wait in the worker's poller, not
# in a thread.
worker_connections = 1000
# One listening socket per worker (SO_REUSEPORT): the kernel spreads new connections over the
# workers. On one shared socket the worker that wakes first takes them, and a burst of
# kept-alive clients often all landed on one worker, leaving the other core idle (measured:
# 8 wrk connections split 8/0 or 7/1 in 2 of 6 tries, 4/4 to 2/6 with this, ping 4.3-8k/s ->
# 8-9.4k/s). The cost: a connection still queued on a worker that restarts is reset. (A second
# server started on the same port by mistake would share it: on_starting refuses to start.)
reuse_port = _bool("WEB_REUSE_PORT", True)
# gunicorn 23+ opens a control socket (a Unix socket for ``gunicornc``), at one fixed path
# (~/.gunicorn/gunicorn.ctl) for every gunicorn of the user: a second server, a benchmark or a
# test server took it over from the first. Nothing here uses it.
control_socket_disable = True
# On SIGTERM (a stop, a redeploy) a worker finishes its requests for at most this long, then
# the master kills it: a request that never ends (a client that stops reading) cannot hold
# a stop for gunicorn's default 30 s, let alone forever.
graceful_timeout = _int("WEB_GRACEFUL_TIMEOUT", 5, 0)


def on_starting(server: Any) -> None:
    # Before gunicorn binds (and before a worker starts): refuse to start on a port in use.
    from controlplane.launcher import address_in_use

    for address in server.cfg.address:
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            problem = address_in_use(host, port)
            if problem:
                raise SystemExit(
                    f"gunicorn: cannot listen on {host}:{port}: {problem} (another server, "
                    "or Turnout already running?); stop it or choose another port"
                )


def post_worker_init(worker: Any) -> None:
    # The URLconfs and every view they import, now rather than in the worker's first request
    # (~0.7 s here, seconds on a loaded machine).
    from django.urls import get_resolver

    from controlplane.wsgi import DECISION_URLCONF

    for urlconf in (None, DECISION_URLCONF):
        get_resolver(urlconf).url_patterns  # noqa: B018 - imports on first access
    # Everything the app loaded at start lives for the worker's lifetime: out of the
    # collector's sight, a full collection scans only what requests leave behind.
    gc.collect()
    gc.freeze()
