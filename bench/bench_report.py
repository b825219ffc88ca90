"""report() per call, with the background sender running against a local sink server.

The sink answers every batch 200 at once, so what is measured is the call the request path
pays (append to the buffer) while the sender drains, serialises and gzips in the same process,
as it would in production. Prints median and p99 per call over batches of calls.
Run: .venv/bin/python bench/bench_report.py [--smoke]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import turnout
from _stack import SMOKE_HELP  # bench/ is on the path: this script's directory

CALLS_PER_SAMPLE = 200
SAMPLES = 1000
received = {"events": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and delayed ACKs
    # stall every answer by 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        events = json.loads(gzip.decompress(raw))["events"]
        received["events"] += len(events)
        body = json.dumps({"stored": len(events), "duplicates": 0, "rejected": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    samples = 20 if parser.parse_args().smoke else SAMPLES
    logging.disable(logging.WARNING)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = turnout.Client(url, "tk_bench_x", start_wait=1, stream=False, poll_interval=3600)
    decision = client.decide("support-chat", "user-1", default=turnout.arm("openai", "gpt-4o"))
    report = client.report
    for _ in range(CALLS_PER_SAMPLE):  # warm-up
        report(decision, latency_ms=812.0, ttft_ms=190.0, input_tokens=1500, output_tokens=420)
    per_call = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        for _ in range(CALLS_PER_SAMPLE):
            report(decision, latency_ms=812.0, ttft_ms=190.0, input_tokens=1500, output_tokens=420)
        per_call.append((time.perf_counter_ns() - start) / CALLS_PER_SAMPLE / 1000)
        time.sleep(0.005)  # the rest of the request: ~40k reports/s offered, the sender keeps up
    total = CALLS_PER_SAMPLE * (samples + 1)
    client.close(timeout=30)
    server.shutdown()
    per_call.sort()
    median, p99 = statistics.median(per_call), per_call[int(len(per_call) * 0.99)]
    print(
        f"turnout report():  median {median:.2f} us   p99 {p99:.2f} us   (per call, batches of {CALLS_PER_SAMPLE})"
    )
    print(f"events: reported {total}, delivered {received['events']}, dropped {client.dropped}")


if __name__ == "__main__":
    main()
