"""The frozen targeting vectors (sdk/conformance/targeting-v1.json) against turnout.routing
and through a Client; the server runs the same file through /decide and OFREP
(tests/api/test_targeting_conformance.py). routing-v1.json's vectors stay as they were."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import turnout
from turnout import routing
from turnout.conformance import TARGETING_VECTORS, load_targeting
from turnout.contract import OPERATORS, RULE_RESULTS

from tests.sdk.conftest import free_port

DATA = load_targeting()
PLANS = {p["key"]: p for p in DATA["plans"]}
PARSED = {key: routing.parse_plan(p) for key, p in PLANS.items()}
VECTORS = DATA["vectors"]


def expected(vector: dict[str, Any]) -> tuple[str, bool, str, str | None]:
    e = vector["expected"]
    return e["arm"], e["shadow"], e["reason"], e["cohort"]


def got(d: routing.Decision) -> tuple[str, bool, str, str | None]:
    return d.arm, d.shadow, d.reason, d.cohort


@pytest.mark.parametrize("vector", VECTORS, ids=[f"t{i}" for i in range(len(VECTORS))])
def test_vector(vector: dict[str, Any]) -> None:
    plan = PARSED[vector["plan"]]
    d = routing.decide(
        plan, vector["unit"], decision_id="d", attributes=vector["attributes"], now=DATA["now"]
    )
    assert got(d) == expected(vector)
    assert routing.bucket(plan.salt, vector["unit"]) == vector["bucket"]


def test_every_vector_through_a_client(tmp_path: Path) -> None:
    """Client.decide reads the real clock: every override in the file has expired long ago
    or lasts long after, except the exact_clock ones, which only a given ``now`` can pin."""
    lkg = tmp_path / "lkg.json"
    lkg.write_text(json.dumps({"schema": 1, "version": "t", "plans": DATA["plans"]}))
    with turnout.Client(f"http://127.0.0.1:{free_port()}", "k", lkg_path=lkg, start_wait=2, stream=False) as client:  # fmt: skip
        for vector in VECTORS:
            if vector.get("exact_clock"):
                continue
            d = client.decide(vector["plan"], vector["unit"], attributes=vector["attributes"])
            assert got(d) == expected(vector), vector


def test_the_vectors_cover_what_the_contract_names() -> None:
    assert len(VECTORS) >= 300
    ops = {c["op"] for p in DATA["plans"] for r in p["rules"] for c in r["when"]}
    assert OPERATORS <= ops  # and one operator no SDK knows, whose plan serves ERROR
    assert {r["then"] for p in DATA["plans"] for r in p["rules"]} == RULE_RESULTS
    outcomes = {expected(v) for v in VECTORS}
    reasons = {o[2] for o in outcomes}
    assert {"SPLIT", "STATIC", "DISABLED", "EXCLUDED", "OVERRIDE", "ERROR"} <= reasons
    assert {("candidate", "OVERRIDE"), ("control", "OVERRIDE")} <= {(o[0], o[2]) for o in outcomes}
    cohorts = {o[3] for o in outcomes if o[3]}
    assert {"internal", "beta"} <= cohorts
    assert {("candidate", "SPLIT"), ("control", "SPLIT")} <= {
        (o[0], o[2]) for o in outcomes if o[3]
    }
    assert any(o[1] for o in outcomes if o[3])  # a cohort unit on control is shadowed too
    assert any(v.get("exact_clock") for v in VECTORS) and any(
        v.get("server_refuses") for v in VECTORS
    )


def test_the_file_is_where_the_server_looks() -> None:
    assert TARGETING_VECTORS.name == "targeting-v1.json" and TARGETING_VECTORS.is_file()
