"""``manage.py simulate_providers --port 8090``: the provider simulator in the foreground."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from migrations_app.simulator.__main__ import build


class Command(BaseCommand):
    help = (
        "Serve the provider simulator (OpenAI, Anthropic and Gemini wire formats, per-model "
        "profiles changeable at /_sim/profiles/{model}) until interrupted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8090)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--profiles", type=Path, default=None, help="JSON: model (or '*') -> profile fields"
        )

    def handle(
        self, *args: Any, port: int, host: str, seed: int, profiles: Path | None, **options: Any
    ) -> None:
        sim = build(port, host, seed, profiles)
        self.stdout.write(f"provider simulator listening on {sim.url}")
        self.stdout.flush()
        try:
            sim.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            sim.httpd.server_close()
