"""The frozen routing vectors (sdk/conformance/routing-v1.json) against turnout.routing, and
through a Client, so the local path and the pure function cannot drift apart. The server runs
the same file through its endpoints (tests/api/test_routing_api.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import turnout
from turnout import routing
from turnout.conformance import VECTORS, load_vectors

from tests.sdk.conftest import free_port

ALL = load_vectors()


def _expected(vector: dict[str, Any]) -> tuple[str, bool, str]:
    e = vector["expected"]
    return e["arm"], e["shadow"], e["reason"]


@pytest.mark.parametrize("vector", ALL, ids=[f"v{i}" for i in range(len(ALL))])
def test_vector(vector: dict[str, Any]) -> None:
    plan = routing.parse_plan(vector["plan"]) if vector["plan"] is not None else None
    decision = routing.decide(plan, vector["unit"], decision_id="d")
    assert (decision.arm, decision.shadow, decision.reason) == _expected(vector)
    if plan is None:
        assert decision.spec is None and decision.plan == ""
        return
    assert routing.bucket(plan.salt, vector["unit"]) == vector["bucket"]
    assert routing.shadow_bucket(plan.salt, vector["unit"]) == vector["shadow_bucket"]
    chosen = plan.candidate if decision.arm == "candidate" else plan.control
    assert decision.spec == chosen and decision.model == chosen.model
    assert decision.fallback == plan.control
    assert decision.shadow_spec == (plan.candidate if decision.shadow else None)
    assert (decision.plan_version, decision.run) == (plan.version, plan.run)


def test_every_vector_through_a_client(tmp_path: Path) -> None:
    """The same vectors through Client.decide, its snapshot loaded from a last-known-good
    file (no server): the client adds nothing to the algorithm."""
    plans = [v for v in ALL if v["plan"] is not None]
    entries = {v["plan"]["key"]: v["plan"] for v in plans}
    lkg = tmp_path / "lkg.json"
    lkg.write_text(json.dumps({"schema": 1, "version": "v", "plans": list(entries.values())}))
    default = turnout.arm("openai", "gpt-4o-mini")
    with turnout.Client(
        f"http://127.0.0.1:{free_port()}", "k", lkg_path=lkg, start_wait=2, stream=False
    ) as client:
        for vector in ALL:
            key = vector["plan"]["key"] if vector["plan"] else "not-in-the-snapshot"
            decision = client.decide(key, vector["unit"], default=default)
            assert (decision.arm, decision.shadow, decision.reason) == _expected(vector)
            if vector["plan"] is None:
                assert decision.spec == default


def test_the_vectors_cover_what_the_contract_names() -> None:
    assert len(ALL) >= 200
    with_plan = [v for v in ALL if v["plan"] is not None]
    weights = {v["plan"]["weight_bp"] for v in with_plan}
    assert {0, 100, 500, 2500, 5000, 9900, 10000} <= weights
    assert {0, 100, 1000, 5000, 10000} <= {v["plan"]["shadow_bp"] for v in with_plan}
    assert {v["plan"]["status"] for v in with_plan} == routing.STATUSES
    assert len({v["plan"]["salt"] for v in with_plan}) >= 3
    assert {"", "ünïcødé-用户"} <= {v["unit"] for v in ALL}
    assert any(v["plan"] is None for v in ALL)
    # The strict comparison is pinned on both sides of the boundary, for split and shadow.
    assert any(v["bucket"] == v["plan"]["weight_bp"] for v in with_plan)
    assert any(v["bucket"] == v["plan"]["weight_bp"] - 1 for v in with_plan)
    assert any(v["shadow_bucket"] == v["plan"]["shadow_bp"] for v in with_plan)
    reasons = {_expected(v) for v in ALL}
    assert {
        ("control", False, "SPLIT"),
        ("candidate", False, "SPLIT"),
        ("control", True, "SPLIT"),
        ("control", False, "DISABLED"),
        ("candidate", False, "STATIC"),
        ("control", False, "DEFAULT"),
    } <= reasons


def test_the_file_is_where_the_server_looks() -> None:
    assert VECTORS.name == "routing-v1.json" and VECTORS.is_file()
