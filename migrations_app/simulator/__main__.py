"""``python -m migrations_app.simulator --port 8090 [--seed 0] [--profiles profiles.json]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from migrations_app.simulator.profiles import Profile
from migrations_app.simulator.server import DEFAULT, Simulator


def build(port: int, host: str, seed: int, profiles_path: Path | None) -> Simulator:
    """A simulator from command-line options; the profiles file maps model names (``*`` for
    the default) to profile fields."""
    profiles: dict[str, Profile] = {}
    if profiles_path is not None:
        data = json.loads(profiles_path.read_text())
        profiles = {str(model): Profile().updated(fields) for model, fields in data.items()}
    default = profiles.pop(DEFAULT, None)
    return Simulator(host=host, port=port, seed=seed, profiles=profiles, default=default)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrations_app.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profiles", type=Path, default=None)
    args = parser.parse_args(argv)
    sim = build(args.port, args.host, args.seed, args.profiles)
    print(f"provider simulator listening on {sim.url}", flush=True)
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
