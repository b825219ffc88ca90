"""The change stream is never served by the WSGI server (gunicorn): SDK clients made as the
README shows, with nothing but the API's base URL, must not be able to take the API down, and
still get changes pushed (from the stream server the config response names) or polled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import turnout
from django.conf import settings

from migrations_app.api.keys import apikey_create
from migrations_app.plans import lifecycle
from tests.conftest import eventually
from tests.factories import person, started_plan

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]
UNITS = [f"user-{i}" for i in range(200)]
STREAM = "/api/v1/sdk/stream"
# Long enough for any machine to answer a constant JSON; a server whose threads are all held
# by streams never answers, however long one waits.
PATIENCE = 30.0


def _arms(client: turnout.Client) -> set[str]:
    return {client.decide("chat", unit).arm for unit in UNITS}


@pytest.fixture
def key(transactional_db: None) -> str:
    return apikey_create(name="sdk", scopes=["decide", "report"])[1]


@pytest.fixture
def running_plan(transactional_db: None) -> str:
    return started_plan("chat").key  # shadow: everyone on control


@pytest.fixture
def clients() -> Iterator[list[turnout.Client]]:
    made: list[turnout.Client] = []
    try:
        yield made
    finally:
        for client in made:
            client.close(timeout=1.0)


def _api_answers(url: str, key: str) -> None:
    """Liveness, health and a decision all answer (the three the issue saw stop)."""
    with httpx.Client(base_url=url, timeout=PATIENCE) as http:
        assert http.get("/api/v1/ping").status_code == 200
        assert http.get("/healthz").status_code == 200
        decide = http.post(
            "/api/v1/decide",
            json={"plan": "chat", "unit": "user-1"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert decide.status_code == 200, decide.text


def test_clients_made_as_the_readme_shows_cannot_take_the_api_down(
    gunicorn_factory: Any, key: str, running_plan: str, clients: list[turnout.Client]
) -> None:
    server = gunicorn_factory()  # 2 workers x 2 threads: four held streams would be all of it
    for _ in range(8):
        clients.append(turnout.Client(server.url, key))  # the README's example, as written
    _api_answers(server.url, key)
    # What `curl -m3` saw: the stream path answers at once, with a code that says why.
    with httpx.Client(timeout=PATIENCE) as http:
        for _ in range(6):
            answer = http.get(f"{server.url}{STREAM}", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 421, answer.status_code
            assert answer.json()["code"] == "stream_not_served_here"
    _api_answers(server.url, key)
    # And the clients still decide, on the snapshot the API served them.
    assert all(_arms(client) == {"control"} for client in clients)


def test_the_config_names_the_stream_server_and_the_sdk_follows_it(
    gunicorn_factory: Any,
    live_server_factory: Any,
    key: str,
    running_plan: str,
    clients: list[turnout.Client],
) -> None:
    extra = {"REDIS_URL": settings.REDIS_URL or ""}
    stream_server = live_server_factory(extra)
    server = gunicorn_factory({**extra, "TURNOUT_STREAM_URL": stream_server.url})
    config = httpx.get(
        f"{server.url}/api/v1/sdk/config",
        headers={"Authorization": f"Bearer {key}"},
        timeout=PATIENCE,
    )
    assert config.headers["Turnout-Stream-URL"] == stream_server.url
    refused = httpx.get(
        f"{server.url}{STREAM}", headers={"Authorization": f"Bearer {key}"}, timeout=PATIENCE
    )
    assert refused.status_code == 421
    assert refused.json()["details"]["stream_url"] == stream_server.url
    # Only the base URL, as the README shows; polling an hour away: only a stream brings it.
    client = turnout.Client(server.url, key, poll_interval=3600)
    clients.append(client)
    assert _arms(client) == {"control"}
    lifecycle.plan_complete(plan_key="chat", actor=person(), reason="ship it")
    assert eventually(lambda: _arms(client) == {"candidate"})
    _api_answers(server.url, key)


def test_with_no_stream_server_the_sdk_polls_and_does_not_hammer(
    gunicorn_factory: Any, key: str, running_plan: str, clients: list[turnout.Client]
) -> None:
    server = gunicorn_factory(access_log=True)
    client = turnout.Client(server.url, key, poll_interval=0.3)
    clients.append(client)
    lifecycle.plan_complete(plan_key="chat", actor=person())
    assert eventually(lambda: _arms(client) == {"candidate"})
    polls = server.requests_to("/api/v1/sdk/config")
    assert eventually(lambda: server.requests_to("/api/v1/sdk/config") >= polls + 20, timeout=60)
    # Twenty polls later the refused stream was asked for a few times (after 0.6, 1.2, 2.4 ...
    # s), not once per poll.
    assert server.requests_to(STREAM) <= 6
    _api_answers(server.url, key)
