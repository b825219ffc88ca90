"""The real ``turnout.Client`` reporting to the live server (uvicorn, PostgreSQL, Redis) through a
local proxy this test controls: 503s for a while, answers lost after the server stored the batch,
the server gone while the host keeps reporting. Every event arrives exactly once, or is counted
as dropped, and the drop count reaches the server's /metrics once it is back.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import turnout
from prometheus_client.parser import text_string_to_metric_families

from migrations_app.api.keys import apikey_create
from migrations_app.models import Outcome, StageAggregate
from migrations_app.outcomes.segment_rollup import catch_up
from tests.conftest import eventually, free_port, sdk_client
from tests.outcomes.conftest import split_plan

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class Proxy:
    """A forwarding proxy with faults on demand.

    ``mode``: ``forward``; ``fail`` (503 without forwarding); ``lose_ack`` (forward, so the
    server stores the batch, then answer 503 as if the answer were lost; ``lose_acks`` such
    answers, then forward). ``stop()`` closes the port (connections refused) and drops every
    request on connections still open; ``start()`` listens on the same port again.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "forward"
        self.lose_acks = 0
        self.down = False
        self.seen: Counter[tuple[str, str]] = Counter()  # (path, what happened)
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        self.down = False
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.down = True
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def count(self, path: str, what: str) -> int:
        with self.lock:
            return self.seen[(path, what)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                if proxy.down:  # the server is gone: no answer at all
                    self.close_connection = True
                    return
                with proxy.lock:
                    mode = proxy.mode
                    if mode == "lose_ack":
                        proxy.lose_acks -= 1
                        if proxy.lose_acks <= 0:
                            proxy.mode = "forward"
                if mode == "fail":
                    with proxy.lock:
                        proxy.seen[(path, "503")] += 1
                    self._answer(503, {"Content-Type": "text/plain"}, b"unavailable")
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in {"host", *HOP_BY_HOP}
                }
                response = proxy.upstream.request(
                    self.command, self.path, content=body, headers=headers
                )
                what = "lost_ack" if mode == "lose_ack" else str(response.status_code)
                with proxy.lock:
                    proxy.seen[(path, what)] += 1
                if mode == "lose_ack":
                    self._answer(503, {"Content-Type": "text/plain"}, b"answer lost")
                    return
                # httpx has decoded the body: its Content-Encoding no longer applies
                skip = {*HOP_BY_HOP, "content-encoding"}
                out = {k: v for k, v in response.headers.items() if k.lower() not in skip}
                self._answer(response.status_code, out, response.content)

            do_GET = do_POST = _relay

        return Handler


@pytest.fixture
def server(live_server_factory: Any) -> str:
    return str(live_server_factory().url)


@pytest.fixture
def proxy(server: str) -> Iterator[Proxy]:
    p = Proxy(server)
    yield p
    if not p.down:
        p.stop()


@pytest.fixture
def key() -> str:
    return apikey_create(name="sdk", scopes=["decide", "report"])[1]


def counter(server: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{server}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def stage_requests(plan: Any) -> int:
    catch_up()
    return sum(StageAggregate.objects.filter(stage__plan=plan).values_list("requests", flat=True))


def client_for(proxy: Proxy, key: str, plan_key: str, **options: Any) -> turnout.Client:
    """A client through the proxy whose snapshot already holds ``plan_key``."""
    settings = {"stream": False, "poll_interval": 3600, "flush_interval": 0.05,
                "max_backoff": 0.2, "close_timeout": 10}  # fmt: skip
    return sdk_client(proxy.url, key, plan_key, **{**settings, **options})


def test_503s_then_lost_answers_then_recovery_every_event_arrives_exactly_once(
    server: str, proxy: Proxy, key: str
) -> None:
    plan = split_plan()
    client = client_for(proxy, key, plan.key, batch_size=100)
    decisions = [client.decide(plan.key, f"user-{i}") for i in range(50)]
    duplicates_before = counter(
        server, "turnout_ingest_events_total", kind="outcomes", result="duplicate"
    )
    try:
        proxy.mode = "fail"
        for i in range(1000):
            client.report(
                decisions[i % len(decisions)],
                latency_ms=100.0 + i,
                ttft_ms=None if i % 7 == 0 else 20.0,
                error="timeout" if i % 13 == 0 else None,
                input_tokens=100,
                output_tokens=20,
            )
        assert eventually(lambda: proxy.count("/api/v1/outcomes", "503") >= 3)
        assert Outcome.objects.filter(plan=plan).count() == 0
        with proxy.lock:
            proxy.mode, proxy.lose_acks = "lose_ack", 2  # stored, but the SDK hears 503
        assert client.flush(timeout=60)
    finally:
        client.close()

    assert proxy.count("/api/v1/outcomes", "lost_ack") == 2
    assert Outcome.objects.filter(plan=plan).count() == 1000
    assert stage_requests(plan) == 1000
    assert client.dropped == 0 and client.rejected == 0
    # The two batches whose answers were lost were sent again and found already stored.
    duplicates = counter(server, "turnout_ingest_events_total", kind="outcomes", result="duplicate")
    assert duplicates - duplicates_before >= 2


def test_server_gone_buffer_full_drops_are_counted_report_never_blocks_and_the_count_arrives(
    server: str, proxy: Proxy, key: str
) -> None:
    plan = split_plan()
    client = client_for(proxy, key, plan.key, batch_size=10, buffer_size=50)
    decision = client.decide(plan.key, "user-1")
    dropped_before = counter(server, "turnout_sdk_dropped_events_total")
    total = 600
    try:
        proxy.stop()

        def host() -> None:
            for i in range(total):
                client.report(decision, latency_ms=50.0 + i)

        worker = threading.Thread(target=host, daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "report() blocked with the server gone"
        # At most a full buffer and the batch in flight survive; the rest were dropped.
        assert client.dropped >= total - 50 - 10
        assert Outcome.objects.filter(plan=plan).count() == 0

        proxy.start()
        assert client.flush(timeout=60)
    finally:
        client.close()

    # Every event either arrived once or was counted as dropped, and the server was told.
    stored = Outcome.objects.filter(plan=plan).count()
    assert stored == total - client.dropped and stored > 0
    assert stage_requests(plan) == stored
    assert counter(server, "turnout_sdk_dropped_events_total") - dropped_before == client.dropped
