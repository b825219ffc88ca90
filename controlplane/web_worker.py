"""gunicorn's gthread worker, with each request read whole before a thread is given to it.

gthread hands a connection to a thread as soon as it has a byte to read, and the thread then
reads the request with blocking calls: a client that sends half a request (slowloris), or the
head and half its body, and then nothing, held a thread for as long as it kept the connection
open. With 2 workers x 2 threads, four such clients took the API down.

Here a thread only takes what has arrived, without waiting (non-blocking reads), keeps it with
the connection and gives the connection back to the worker's poller until more arrives. The
request goes to gunicorn's parser, in a thread, once its head is complete and, when it says its
length (Content-Length, at most Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``), its body too; a slow
client then costs a socket in the poller, not a thread. Unless bytes keep coming, the poller closes the connection
after ``keepalive`` seconds (gthread's own pending timeout), and whatever comes, a request not
complete within ``WEB_READ_TIMEOUT`` seconds of its first byte is closed.

gunicorn still parses every request (this only decides when enough has arrived: the bytes are
handed over untouched). A chunked body, a body announced with ``Expect: 100-continue`` (the
client waits for the answer before sending it) or one larger than what Django reads is read
by the thread as before (and refused by Django).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from gunicorn.workers import gthread

HEAD_END = b"\r\n\r\n"
# The largest head gunicorn accepts (its request line and header field limits, with margin):
# past it the bytes go to the parser, which refuses them.
HEAD_MAX = 128 * 1024
_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n)")


def _read_timeout() -> float:
    raw = os.environ.get("WEB_READ_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else 30.0
    except ValueError:
        raise SystemExit(f"WEB_READ_TIMEOUT={raw!r}: expected seconds") from None
    if not 0 < value <= 3600:
        raise SystemExit(f"WEB_READ_TIMEOUT={raw!r}: expected 0 to 3600 seconds")
    return value


READ_TIMEOUT = _read_timeout()


def body_buffer_max() -> int:
    """Bodies up to this are read before the request is handed on: what the API accepts at
    most, Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (read when a request comes: the worker's
    app has set Django up by then). No limit there: bodies are read by the thread."""
    from django.conf import settings

    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return limit if limit is not None else -1


def wanted(data: bytes | bytearray) -> int | None:
    """How many bytes the request at the start of ``data`` takes to be read whole (its head,
    and its body when its length is known and small enough), or None while its head is
    incomplete. At least ``len(data)`` when nothing more is to be waited for. Reads the
    connection's buffer as it is: a copy of it per call, a few times per poller event, cost a
    body trickled in small packets time quadratic in its length."""
    end = data.find(HEAD_END)
    if end < 0:
        return len(data) if len(data) > HEAD_MAX else None
    head = data[: end + 2].lower()
    if b"\r\ntransfer-encoding" in head or b"\r\nexpect" in head:
        return len(data)
    lengths = _LENGTH.findall(head)
    if len(lengths) != 1 or int(lengths[0]) > body_buffer_max():
        return len(data)  # none, several (the parser refuses those) or too large
    return end + len(HEAD_END) + int(lengths[0])


class ThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl or (conn.initialized and conn.parser.unreader.buf.getvalue()):
            # TLS (not used here: a proxy terminates it) is read by the parent, as is what was
            # read ahead with the last request.
            return super().handle(conn)
        pending = getattr(conn, "turnout_pending", None)
        if pending is None:
            pending = conn.turnout_pending = bytearray()
            conn.turnout_since = None
        closed = False
        conn.sock.setblocking(False)
        try:
            while True:
                need = wanted(pending)
                if need is not None and len(pending) >= need:
                    break
                try:
                    chunk = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                if conn.turnout_since is None:
                    conn.turnout_since = time.monotonic()
                pending += chunk
        finally:
            conn.sock.setblocking(True)
        need = wanted(pending)
        if closed or (need is None or len(pending) < need):
            if closed or (
                conn.turnout_since is not None
                and time.monotonic() - conn.turnout_since > READ_TIMEOUT
            ):
                return False  # gone, or too slow: the connection is closed
            # Not whole yet: back to the poller, which brings it back when more arrives.
            conn.data_ready = True  # the parent's own wait for a first byte is not needed
            return gthread._DEFER
        data = bytes(pending)
        conn.turnout_pending = None
        conn.init()
        conn.parser.unreader.unread(data)
        return super().handle(conn)
