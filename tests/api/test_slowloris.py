"""Slow clients (slowloris) must not take the API down. A client that opens a connection and
sends half a request, or the head and half its body, and then nothing, used to hold one of
gunicorn's threads for as long as it kept the connection open: a handful of them (2 workers x 2
threads) and /api/v1/ping no longer answered. Against gunicorn exactly as ``make run`` starts
it (controlplane/gunicorn.conf.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

# Many times the server's threads, of each kind.
SLOW_CLIENTS = 24
# The watchdog that turns a frozen server into a failure (a frozen one never answers), not a
# speed asserted.
WATCHDOG = 30.0

HEAD = b"POST /api/v1/decide HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture
def slow_clients() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def _hold(url_port: int, payload: bytes, held: list[socket.socket]) -> None:
    sock = socket.create_connection(("127.0.0.1", url_port))
    held.append(sock)
    if payload:
        sock.sendall(payload)


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_half_sent_requests_held_open_leave_the_api_answering(
    gunicorn_factory: Any, slow_clients: list[socket.socket]
) -> None:
    server = gunicorn_factory()
    with httpx.Client(base_url=server.url, timeout=WATCHDOG) as http:
        assert http.get("/api/v1/ping").status_code == 200
        for _ in range(SLOW_CLIENTS):
            _hold(server.port, b"", slow_clients)  # connected, nothing sent
            _hold(server.port, b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n", slow_clients)
            body_head = HEAD + b"Content-Length: 1000\r\n\r\n" + b'{"plan": "'
            _hold(server.port, body_head, slow_clients)  # the head, a tenth of the body
        # The slow ones stay open (and unfinished) while these are made, on new connections.
        for _ in range(4):
            with httpx.Client(base_url=server.url, timeout=WATCHDOG) as fresh:
                answer = fresh.get("/api/v1/ping")
            assert answer.status_code == 200


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_a_request_sent_a_few_bytes_at_a_time_is_answered(gunicorn_factory: Any) -> None:
    """A slow client that does finish is served: the pieces are kept until the request is
    whole (head and body), then parsed as one."""
    server = gunicorn_factory()
    body = b'{"plan": "none", "unit": "u-1"}'
    request = HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=WATCHDOG) as sock:
        for start in range(0, len(request), 7):
            sock.sendall(request[start : start + 7])
            time.sleep(0.01)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    # No key: 401 in the error format, after the whole body was read as JSON.
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"code":"unauthenticated"' in answer


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
POST5 = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
CHUNKED = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab"
EXPECT = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"
HUGE = b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
TWICE = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "need"),
    [
        (GET[:-2], None),  # the head is not complete
        (GET, len(GET)),
        (POST5 + b"ab", len(POST5) + 5),  # waits for the body
        (POST5.lower() + b"abcdefgh", len(POST5) + 5),  # the next request's bytes after it
        (CHUNKED, len(CHUNKED)),  # the parser reads chunked bodies itself
        (EXPECT, len(EXPECT)),  # the client waits for 100 Continue
        (HUGE, len(HUGE)),  # over the buffer: the thread reads it (Django refuses it)
        (TWICE, len(TWICE)),  # the parser refuses it
        (b"GET /" + b"a" * 200_000, 200_005),  # past any head gunicorn accepts
    ],
)
def test_what_a_request_needs_before_it_is_handed_on(data: bytes, need: int | None) -> None:
    from controlplane.web_worker import wanted

    assert wanted(data) == need
    assert wanted(bytearray(data)) == need  # the connection's buffer, read without a copy


def test_the_body_buffered_is_at_most_what_django_reads(settings: Any) -> None:
    """One limit: a body Django would refuse (over DATA_UPLOAD_MAX_MEMORY_SIZE) is not buffered
    first, whatever that setting says."""
    from controlplane.web_worker import wanted

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5
    assert wanted(POST5 + b"ab") == len(POST5) + 5
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4
    assert wanted(POST5 + b"ab") == len(POST5) + 2  # handed on as it is
