"""The provider simulator: the vendors' error bodies and statuses as their own SDKs read them,
the control endpoint changing behaviour mid-run, seeded reproducibility, concurrency, and the
two ways to start it as a process."""

from __future__ import annotations

import socketserver
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from turnout.providers import NO_RETRY, Provider, Request

from migrations_app.simulator import Profile, Simulator
from migrations_app.simulator import server as simulator_server
from tests.conftest import ROOT, free_port, stop, wait_for_port

ASK = Request(messages=[{"role": "user", "content": "ping"}])
Make = Callable[..., Provider]


@pytest.fixture
def http(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as client:
        yield client


# --- the vendors' error bodies, read by the vendors' SDKs ---


@pytest.mark.parametrize(
    ("kind", "exc", "status", "code"),
    [
        ("rate_limited", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("quota", openai.RateLimitError, 429, "insufficient_quota"),
        ("overloaded", openai.InternalServerError, 503, None),
        ("server_error", openai.InternalServerError, 500, None),
        ("bad_request", openai.BadRequestError, 400, None),
        ("auth", openai.AuthenticationError, 401, "invalid_api_key"),
    ],
)
def test_openai_errors_as_the_openai_sdk_reads_them(
    sim: Simulator, kind: str, exc: type[openai.APIStatusError], status: int, code: str | None
) -> None:
    sim.set_profile("gpt-x", {"fail_next": [kind]})
    client = openai.OpenAI(api_key="k", base_url=sim.url + "/v1", max_retries=0)
    with pytest.raises(exc) as raised:
        client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == status
    assert raised.value.code == code
    assert set(raised.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "exc", "status", "etype"),
    [
        ("rate_limited", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("overloaded", anthropic.OverloadedError, 529, "overloaded_error"),
        ("server_error", anthropic.InternalServerError, 500, "api_error"),
        ("bad_request", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("auth", anthropic.AuthenticationError, 401, "authentication_error"),
    ],
)
def test_anthropic_errors_as_the_anthropic_sdk_reads_them(
    sim: Simulator, kind: str, exc: type[anthropic.APIStatusError], status: int, etype: str
) -> None:
    sim.set_profile("claude-x", {"fail_next": [kind]})
    client = anthropic.Anthropic(api_key="k", base_url=sim.url, max_retries=0)
    with pytest.raises(exc) as raised:
        client.messages.create(
            model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == etype and body["error"]["message"]
    assert raised.value.response.headers["request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("kind", "exc", "code", "status"),
    [
        ("rate_limited", genai_errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("overloaded", genai_errors.ServerError, 503, "UNAVAILABLE"),
        ("server_error", genai_errors.ServerError, 500, "INTERNAL"),
        ("bad_request", genai_errors.ClientError, 400, "INVALID_ARGUMENT"),
    ],
)
def test_gemini_errors_as_google_genai_reads_them(
    sim: Simulator, kind: str, exc: type[genai_errors.APIError], code: int, status: str
) -> None:
    sim.set_profile("gemini-x", {"fail_next": [kind]})
    client = genai.Client(api_key="k", http_options=genai_types.HttpOptions(base_url=sim.url))
    with pytest.raises(exc) as raised:
        client.models.generate_content(model="gemini-x", contents="x")
    assert (raised.value.code, raised.value.status) == (code, status)
    assert raised.value.message


def test_missing_credentials_get_each_vendors_auth_error(http: httpx.Client) -> None:
    chat = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    claude = http.post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": []})
    gemini = http.post("/v1beta/models/m:generateContent", json={"contents": []})

    assert chat.status_code == 401 and chat.json()["error"]["code"] == "invalid_api_key"
    assert claude.status_code == 401
    assert claude.json()["error"]["type"] == "authentication_error"
    assert gemini.status_code == 400
    assert gemini.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_gemini_routes_under_both_api_versions_and_streams_sse(
    http: httpx.Client, sim: Simulator, version: str
) -> None:
    headers = {"x-goog-api-key": "k"}
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}

    whole = http.post(f"/{version}/models/gem:generateContent", json=body, headers=headers)
    streamed = http.post(
        f"/{version}/models/gem:streamGenerateContent?alt=sse", json=body, headers=headers
    )

    assert whole.status_code == 200
    assert whole.json()["candidates"][0]["content"]["parts"] == [{"text": "You said: hello"}]
    assert whole.json()["usageMetadata"]["totalTokenCount"] == 2 + 4
    assert streamed.headers["content-type"] == "text/event-stream"
    frames = [f for f in streamed.text.split("\r\n\r\n") if f]
    assert all(f.startswith("data: ") for f in frames) and len(frames) == 4
    assert sim.stats()["models"]["gem"]["route:gemini"] == 2


# --- control endpoint ---


def test_control_endpoint_makes_the_candidate_regress_mid_run(
    http: httpx.Client, sim: Simulator, make: Make
) -> None:
    provider = make("openai-chat", model="candidate", retry=NO_RETRY)
    before = [provider.complete(ASK) for _ in range(5)]

    changed = http.put("/_sim/profiles/candidate", json={"errors": {"overloaded": 1.0}})
    during = [provider.complete(ASK) for _ in range(5)]
    http.put("/_sim/profiles/candidate", json={"errors": {}, "answer": "degraded"})
    after = provider.complete(Request(messages=[{"role": "user", "content": "one two three four"}]))

    assert changed.status_code == 200 and changed.json()["errors"] == {"overloaded": 1.0}
    assert all(r.ok for r in before)
    assert [r.error for r in during] == ["overloaded"] * 5
    assert after.ok and sorted(after.text.split()) == sorted("You said: one".split())
    stats = http.get("/_sim/stats").json()
    assert stats["requests"] == 11
    assert stats["models"]["candidate"] == {
        "requests": 11, "route:openai_chat": 11, "ok": 6, "overloaded": 5,
    }  # fmt: skip
    # Other models keep the default profile.
    assert (
        http.get("/_sim/profiles/control").json()
        == Profile(latency_median_ms=8.0, latency_p95_ms=16.0, ttft_fraction=0.2).to_dict()
    )


def test_control_endpoint_refuses_bad_profiles_and_resets(
    http: httpx.Client, sim: Simulator
) -> None:
    assert http.put("/_sim/profiles/m", json={"latency": 5}).status_code == 400
    assert http.put("/_sim/profiles/m", json={"errors": {"meltdown": 0.1}}).status_code == 400
    assert (
        http.put("/_sim/profiles/m", json={"errors": {"timeout": 0.7, "auth": 0.7}}).status_code
        == 400
    )
    assert http.put("/_sim/profiles/m", json={"answer": "poetry"}).status_code == 400
    assert http.put("/_sim/profiles/m", json=[1]).status_code == 400
    assert "m" not in http.get("/_sim/profiles").json()

    assert (
        http.put("/_sim/profiles/m", json={"answer": "canned", "text": "fixed"}).status_code == 200
    )
    assert (
        http.put("/_sim/profiles/*", json={"latency_median_ms": 1, "latency_p95_ms": 2}).status_code
        == 200
    )
    assert http.get("/_sim/profiles/other").json()["latency_median_ms"] == 1
    assert http.post("/_sim/reset").json() == {"reset": True}
    assert http.get("/_sim/profiles/m").json()["answer"] == "echo"
    assert http.get("/_sim/profiles/other").json()["latency_median_ms"] == 8.0
    assert http.get("/_sim/stats").json()["requests"] == 0
    assert http.get("/_sim/nothing").status_code == 404


# --- randomness, concurrency ---


def _outcomes(seed: int) -> list[str | None]:
    profile = Profile(
        latency_median_ms=1, latency_p95_ms=2, errors={"server_error": 0.2, "rate_limited": 0.2}
    )
    with Simulator(seed=seed, default=profile) as sim:
        from turnout.providers.openai import OpenAIProvider

        provider = OpenAIProvider(model="m", api_key="k", base_url=sim.url + "/v1", retry=NO_RETRY)
        try:
            return [provider.complete(ASK).error for _ in range(40)]
        finally:
            provider.close()


def test_seeded_runs_are_reproducible() -> None:
    first, again, other = _outcomes(3), _outcomes(3), _outcomes(4)

    assert first == again
    assert first != other
    assert {"server_error", "rate_limited", None} == set(first)


def _all_within(
    call: Callable[[], object], *, count: int, threads: int, patience_s: float
) -> list[object]:
    """``count`` calls from ``threads`` threads, and their results; fails once ``patience_s``
    has passed with calls still unanswered (so a server that never answers fails the test
    instead of hanging it; nothing is timed)."""
    pool = ThreadPoolExecutor(max_workers=threads)
    futures = [pool.submit(call) for _ in range(count)]
    _, pending = wait(futures, timeout=patience_s)
    try:
        assert not pending, f"{len(pending)} of {count} calls unanswered after {patience_s:.1f} s"
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=not pending, cancel_futures=True)


CHAT = {"model": "gathered", "messages": [{"role": "user", "content": "ping"}]}
# One connection per call (no client pool to queue behind), and no keep-alive for a serial
# server to sit on.
HEADERS = {"Authorization": "Bearer k", "Connection": "close"}
# Patience, not a speed limit: how long a broken server may keep the test waiting before it
# fails. A concurrent server opens the gate as soon as the calls are in, however slowly they
# come; a serial one never does, however long it is given.
PATIENCE_S = 120.0


def _chat(url: str) -> Callable[[], int]:
    def call() -> int:
        return httpx.post(
            url + "/v1/chat/completions", json=CHAT, headers=HEADERS, timeout=PATIENCE_S
        ).status_code

    return call


def test_hundreds_of_requests_are_inside_the_server_at_once(sim: Simulator) -> None:
    """With ``gather`` = 100 no request is answered until 100 are inside the server together:
    every call answered proves it held 100 at once (twice over: 200 calls, two openings).
    Nothing is timed, so a loaded machine passes and a serial server cannot."""
    sim.set_profile("gathered", {"gather": 100, "latency_median_ms": 0, "latency_p95_ms": 0})

    results = _all_within(_chat(sim.url), count=200, threads=100, patience_s=PATIENCE_S)

    assert results == [200] * 200
    stats = sim.stats()
    assert stats["gathered"] == {"gathered": 2}
    assert stats["peak_in_flight"] >= 100 and stats["in_flight"] == 0
    with pytest.raises(ValueError, match="gather"):
        sim.set_profile("gathered", {"gather": -1})


class _SerialServer(simulator_server._Server):
    """The simulator's server answering one connection at a time, as a server without
    threads would."""

    def process_request(self, request: Any, client_address: Any) -> None:
        socketserver.TCPServer.process_request(self, request, client_address)


def test_a_server_answering_one_at_a_time_never_opens_the_gate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above against a serial server: the first call is held for company that can
    never come in, so none is answered, whatever the patience (3 s here)."""
    monkeypatch.setattr(simulator_server, "_Server", _SerialServer)
    serial = Simulator(default=Profile(latency_median_ms=0, latency_p95_ms=0, gather=5)).start()
    try:
        with pytest.raises(AssertionError, match="5 of 5 calls unanswered after 3.0 s"):
            _all_within(_chat(serial.url), count=5, threads=5, patience_s=3.0)
        stats = serial.stats()
        assert (stats["peak_in_flight"], stats["gathered"]) == (1, {})
    finally:
        serial.stop()  # opens the gate for the call held in it, then stops


# --- processes ---


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "migrations_app.simulator"],
        [sys.executable, "manage.py", "simulate_providers"],
    ],
)
@pytest.mark.live
def test_runs_as_a_process(command: list[str]) -> None:
    port = free_port()
    proc = subprocess.Popen([*command, "--port", str(port), "--seed", "1"], cwd=ROOT)
    try:
        wait_for_port(port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            answer = client.post(
                "/v1/messages",
                json={
                    "model": "c",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            )
            stats = client.get("/_sim/stats").json()
    finally:
        stop(proc)
    assert answer.status_code == 200 and answer.json()["content"][0]["text"] == "You said: hi"
    assert stats["models"]["c"]["requests"] == 1
