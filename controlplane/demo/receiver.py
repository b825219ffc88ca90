"""The demo's on-call: a webhook receiver that prints each page the webhook channel delivers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controlplane.demo import say


class Pages(BaseHTTPRequestHandler):
    """Prints each page and keeps it in :attr:`received` (one receiver per process)."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        alert = json.loads(body).get("alert", {})
        Pages.received.append(alert)
        guardrail = alert.get("guardrail") or {}
        say(
            f"PAGE {alert.get('severity', '').upper()}: {alert.get('plan_key')} {alert.get('event')}"
            f" ({alert.get('action_taken')})"
        )
        if guardrail:
            say(f"     {guardrail.get('summary')}")
        kinds = alert.get("error_kinds", {})
        say(f"     errors: control {kinds.get('control')}, candidate {kinds.get('candidate')}")
        if alert.get("dashboard_url"):
            say(f"     {alert['dashboard_url']}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_receiver() -> tuple[ThreadingHTTPServer, str]:
    """The receiver on a port the OS picks, serving on a daemon thread; returns it and the
    URL the webhook channel posts to."""
    pages = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    return pages, f"http://127.0.0.1:{pages.server_address[1]}/hook"
