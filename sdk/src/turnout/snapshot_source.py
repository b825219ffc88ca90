"""Where the client's plan snapshot comes from: the last-known-good file at start, then the
control plane, kept fresh by one background thread.

- Changes arrive over Server-Sent Events (``GET /api/v1/sdk/stream``, reconnecting with
  backoff and ``Last-Event-ID``); while the stream is down the same thread polls
  ``/api/v1/sdk/config`` with ``If-None-Match`` every ``poll_interval`` seconds. The stream
  is read from ``stream_url`` if given, else from where the config response says it is
  (``Turnout-Stream-URL``), else from ``base_url``. An API server that holds no streams
  answers 4xx (421, naming the stream server when it has one): the source follows the name,
  or polls and asks for the stream again only after ever longer pauses.
- Every snapshot is swapped in whole (one reference assignment, atomic under the GIL), so
  readers take no lock, and written atomically to the last-known-good file.
- A bad snapshot, a server that is down, slow or misbehaving: the last good one stays.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from turnout import routing
from turnout._log import LogOnce, log
from turnout.contract import CONFIG_PATH, STREAM_PATH, STREAM_URL_HEADER

# After a stream answered 4xx (not served there, or the key is refused) the source polls, and
# asks for the stream again after poll_interval x 2^n seconds, at most this.
STREAM_REFUSED_MAX_WAIT = 600.0


class SnapshotSource:
    """The snapshot ``decide()`` reads (:attr:`snapshot`), and the thread that refreshes it.

    Made by the client, which gives it the HTTP connection pool at :meth:`start`. The snapshot
    and what is known of the stream's whereabouts survive ``fork()``; the thread, its events
    and its open stream do not (:meth:`after_fork`).
    """

    def __init__(
        self,
        *,
        base_url: str,
        stream_url: str | None,
        lkg_path: str | os.PathLike[str] | None,
        poll_interval: float,
        stream: bool,
        timeout: float,
        max_backoff: float,
        log_once: LogOnce,
    ) -> None:
        self.snapshot: routing.Snapshot = routing.EMPTY_SNAPSHOT
        self._etag: str | None = None
        self._base_url = base_url
        # Streams may be served apart from the API (a long-lived-connection server): named here,
        # or by the server (see _adopt_stream_url).
        self._stream_url = str(stream_url or base_url).rstrip("/")
        self._stream_url_given = stream_url is not None
        self._stream_retry_at = 0.0  # monotonic; after a 4xx, no stream request before this
        self._lkg_path = Path(lkg_path) if lkg_path else None
        self._poll_interval = poll_interval
        self._stream_enabled = stream
        self._timeout = timeout
        self._max_backoff = max_backoff
        self._log = log_once
        #: Called with each snapshot installed from the server, in the refresh thread (the
        #: client warms up provider adapters there, off the request path).
        self.on_install: Callable[[routing.Snapshot], object] | None = None
        self._reset()

    def _reset(self) -> None:
        """What must not be shared across ``fork()``: events, the open stream, the thread."""
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._stream_response: httpx.Response | None = None
        self._thread = threading.Thread(
            target=self._refresh_loop, name="turnout-refresh", daemon=True
        )

    # --- life --------------------------------------------------------------------------

    def start(self, http: httpx.Client) -> None:
        self._http = http
        self._thread.start()

    def after_fork(self) -> None:
        """In a forked child: fresh events and thread; the parent's snapshot is served at once."""
        self._reset()
        self.ready.set()

    def stop(self) -> None:
        self._stop.set()
        response = self._stream_response
        if response is not None:
            response.close()  # unblocks the thread's read

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # --- last-known-good file ----------------------------------------------------------

    def load_lkg(self) -> None:
        """Read the last-known-good file, if any; a corrupt one is ignored. Called before the
        thread starts, so that a fresh fetch can never be overwritten by the older file."""
        if self._lkg_path is None:
            return
        try:
            body = self._lkg_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("turnout: cannot read the last-known-good snapshot: %s", exc)
            return
        try:
            self.snapshot = routing.parse_snapshot(json.loads(body))
        except Exception as exc:  # a corrupt file must not stop the host from starting
            log.warning(
                "turnout: ignoring unreadable last-known-good snapshot %s: %s", self._lkg_path, exc
            )

    def _install(self, data: Any, etag: str | None, body: bytes) -> None:
        """Swap in a new snapshot whole; raises on a bad one, leaving the old in place."""
        snapshot = routing.parse_snapshot(data)
        self.snapshot = snapshot
        self._etag = etag or (f'"{snapshot.version}"' if snapshot.version else None)
        self._save_lkg(body)
        hook = self.on_install
        if hook is not None:
            try:
                hook(snapshot)
            except Exception as exc:  # a warm-up must never lose the snapshot
                log.debug("turnout: after installing a snapshot: %r", exc)

    def _save_lkg(self, body: bytes) -> None:
        if self._lkg_path is None:
            return
        tmp = self._lkg_path.with_name(
            f".{self._lkg_path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        )
        try:
            with open(tmp, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            # Atomic: a reader (another process starting now) never sees half a file.
            os.replace(tmp, self._lkg_path)
        except OSError as exc:
            self._log.warning("lkg-write", "turnout: cannot write %s: %s", self._lkg_path, exc)
            tmp.unlink(missing_ok=True)

    # --- fetch, stream -----------------------------------------------------------------

    def _fetch(self) -> None:
        headers = {"If-None-Match": self._etag} if self._etag else {}
        try:
            response = self._http.get(CONFIG_PATH, headers=headers)
            if response.status_code in (200, 304):
                self._adopt_stream_url(response.headers.get(STREAM_URL_HEADER))
            if response.status_code == 304:
                return
            if response.status_code != 200:
                self._log.warning(
                    f"fetch-{response.status_code}",
                    "turnout: %s answered %s",
                    CONFIG_PATH,
                    response.status_code,
                )
                return
            self._install(response.json(), response.headers.get("ETag"), response.content)
        except Exception as exc:  # down, or a bad snapshot: keep serving the last good one
            log.debug("turnout: config fetch failed: %r", exc)
        finally:
            self.ready.set()

    def _refresh_loop(self) -> None:
        backoff = min(1.0, self._max_backoff)
        last_event_id: str | None = None
        refusals = 0
        while not self._stop.is_set():
            try:
                self._fetch()
                if self._stream_wanted():
                    last_event_id, delivered, retry = self._follow_stream(last_event_id)
                    refusals = 0
                    if delivered:
                        backoff = retry  # it was up: reconnect soon, as the server asked
            except _StreamRefused as refused:
                if self._adopt_stream_url(refused.stream_url):
                    continue  # sent to the stream server: go there now
                refusals += 1
                self._stream_retry_at = time.monotonic() + min(
                    STREAM_REFUSED_MAX_WAIT, self._poll_interval * 2**refusals
                )
                self._log.warning(
                    f"stream-{refused.status}",
                    "turnout: the change stream answered %s; polling every %g s instead",
                    refused.status,
                    self._poll_interval,
                )
            except Exception as exc:
                log.debug("turnout: change stream unavailable: %r", exc)
            if self._stream_wanted():
                # While the stream is down this loop is the poll: fetch (ETag), wait, retry.
                wait = min(backoff, self._poll_interval)
                backoff = min(backoff * 2, self._max_backoff)
            else:
                wait = self._poll_interval
            self._stop.wait(wait * random.uniform(0.9, 1.1))

    def _stream_wanted(self) -> bool:
        return (
            self._stream_enabled
            and not self._stop.is_set()
            and time.monotonic() >= self._stream_retry_at
        )

    def _adopt_stream_url(self, advertised: str | None) -> bool:
        """Take the stream server the control plane names, unless the caller named one; True if
        that is a change (asking for the stream there at once)."""
        if self._stream_url_given or not advertised:
            return False
        url = advertised_stream_url(self._base_url, advertised)
        if url is None:
            self._log.warning(
                "stream-url", "turnout: ignoring the stream URL the server named: %r", advertised
            )
            return False
        if url == self._stream_url:
            return False
        self._stream_url = url
        self._stream_retry_at = 0.0
        return True

    def _follow_stream(self, last_event_id: str | None) -> tuple[str | None, bool, float]:
        """Read the stream until it ends; returns the last event id, whether any event came,
        and the reconnection delay the server asked for (its ``retry:`` field)."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        # Heartbeats come every 15 s: a minute of silence means the connection is dead.
        timeout = httpx.Timeout(self._timeout, read=60.0)
        url = f"{self._stream_url}{STREAM_PATH}"
        delivered, retry = False, 1.0
        with self._http.stream("GET", url, headers=headers, timeout=timeout) as response:
            if 400 <= response.status_code < 500:
                raise _StreamRefused(response.status_code, response.headers.get(STREAM_URL_HEADER))
            if response.status_code != 200:
                raise RuntimeError(f"stream answered {response.status_code}")
            self._stream_response = response
            try:
                event = ""
                data: list[str] = []
                for line in response.iter_lines():
                    if self._stop.is_set():
                        break
                    if not line:
                        if data:
                            self._on_event(event or "message", "\n".join(data))
                            delivered = True
                        event, data = "", []
                        continue
                    if line.startswith(":"):
                        continue  # heartbeat
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name == "event":
                        event = value
                    elif name == "id" and "\0" not in value:
                        last_event_id = value
                    elif name == "retry" and value.isdigit():
                        retry = max(0.1, int(value) / 1000)
            finally:
                self._stream_response = None
        return last_event_id, delivered, retry

    def _on_event(self, event: str, data: str) -> None:
        if event != "config":
            return
        try:
            payload = json.loads(data)
            version = payload["version"]
        except (ValueError, TypeError, KeyError):
            self._fetch()
            return
        if version == self.snapshot.version:
            return
        snapshot = payload.get("snapshot")
        if not isinstance(snapshot, dict):
            self._fetch()
            return
        # The event carries the snapshot: no refetch, no burst of requests per change.
        try:
            self._install(snapshot, f'"{version}"', json.dumps(snapshot).encode())
        except Exception as exc:
            log.debug("turnout: streamed snapshot unusable (%r); fetching", exc)
            self._fetch()


class _StreamRefused(Exception):
    """The stream answered 4xx: not served there (421), or the key is refused."""

    def __init__(self, status: int, stream_url: str | None) -> None:
        super().__init__(f"stream answered {status}")
        self.status = status
        self.stream_url = stream_url


def advertised_stream_url(base_url: str, advertised: str) -> str | None:
    """The stream server a control plane names, if the client may follow it: an absolute
    http(s) URL with a host and nothing else (no credentials, query or fragment), and not
    plain http when the API is reached over https (the API key goes there)."""
    try:
        parts = urlsplit(advertised.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username or parts.password or parts.query or parts.fragment:
        return None
    if parts.scheme == "http" and urlsplit(base_url).scheme == "https":
        return None
    return advertised.strip().rstrip("/")
