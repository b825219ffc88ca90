"""Where the client reads the change stream from: the server names its stream server (the config
response's Turnout-Stream-URL, or a refused stream's), and a stream refused with 4xx is not asked
for again on every poll."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import turnout
from turnout.client import STREAM_URL_HEADER, advertised_stream_url

from tests.conftest import eventually
from tests.sdk.conftest import FakeTurnout, plan_entry

UNITS = [f"user-{i}" for i in range(200)]
CONFIG = "/api/v1/sdk/config"
STREAM = "/api/v1/sdk/stream"
MakeClient = Callable[..., turnout.Client]


def arms(client: turnout.Client) -> set[str]:
    return {client.decide("chat", unit).arm for unit in UNITS}


@pytest.fixture
def stream_server() -> Iterator[FakeTurnout]:
    """A second control-plane endpoint, playing the stream server."""
    server = FakeTurnout()
    try:
        yield server
    finally:
        server.stop()


def _completed(*servers: FakeTurnout) -> None:
    for server in servers:
        server.set_plans([plan_entry(status="completed", version=2)])


def test_the_client_streams_from_the_server_the_config_names(
    fake: FakeTurnout, stream_server: FakeTurnout, make_client: MakeClient
) -> None:
    fake.stream_status = 421
    fake.config_headers = {STREAM_URL_HEADER: stream_server.url}
    client = make_client(poll_interval=3600)
    assert eventually(lambda: stream_server.active_streams() == 1)
    assert fake.requests_to(STREAM) == []  # the API server was never asked for a stream
    _completed(fake, stream_server)
    assert eventually(lambda: arms(client) == {"candidate"})  # pushed: polling is an hour away


def test_a_refused_stream_that_names_the_stream_server_is_followed(
    fake: FakeTurnout, stream_server: FakeTurnout, make_client: MakeClient
) -> None:
    fake.stream_status = 421
    fake.stream_headers = {STREAM_URL_HEADER: f"{stream_server.url}/"}
    client = make_client(poll_interval=3600)
    assert eventually(lambda: stream_server.active_streams() == 1)
    assert len(fake.requests_to(STREAM)) == 1
    _completed(fake, stream_server)
    assert eventually(lambda: arms(client) == {"candidate"})


def test_a_stream_url_given_by_the_caller_wins(
    fake: FakeTurnout, stream_server: FakeTurnout, make_client: MakeClient
) -> None:
    fake.config_headers = {STREAM_URL_HEADER: stream_server.url}
    make_client(poll_interval=3600, stream_url=fake.url)
    assert eventually(lambda: fake.active_streams() == 1)
    assert stream_server.requests_to(STREAM) == []


@pytest.mark.parametrize("status", [401, 421])
def test_a_refused_stream_falls_back_to_polling_without_asking_on_every_poll(
    fake: FakeTurnout, make_client: MakeClient, status: int
) -> None:
    fake.stream_status = status
    client = make_client(poll_interval=0.05)
    _completed(fake)
    assert eventually(lambda: arms(client) == {"candidate"})  # polled
    polls = len(fake.requests_to(CONFIG))
    assert eventually(lambda: len(fake.requests_to(CONFIG)) >= polls + 60, timeout=60)
    # Sixty polls later: the stream was asked for after 0.1, 0.2, 0.4 ... s (doubling),
    # a handful of times, not once per poll.
    assert len(fake.requests_to(STREAM)) <= 8
    fake.stream_status = 200  # served again: the client is back on push at its next try
    assert eventually(lambda: fake.active_streams() == 1, timeout=60)


@pytest.mark.parametrize(
    ("base", "advertised", "expected"),
    [
        ("http://api:8000", "http://stream:8001", "http://stream:8001"),
        ("http://api:8000", " https://stream.example/sse/ ", "https://stream.example/sse"),
        ("https://api.example", "https://stream.example", "https://stream.example"),
        ("https://api.example", "http://stream.example", None),  # the key would go in clear
        ("http://api:8000", "ftp://stream", None),
        ("http://api:8000", "/relative", None),
        ("http://api:8000", "http://user:pw@stream", None),
        ("http://api:8000", "http://stream?x=1", None),
        ("http://api:8000", "http://stream:port", None),
    ],
)
def test_which_advertised_stream_urls_are_followed(
    base: str, advertised: str, expected: str | None
) -> None:
    assert advertised_stream_url(base, advertised) == expected
