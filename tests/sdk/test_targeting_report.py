"""The SDK's report of targeted decisions: an excluded or overridden decision's outcome says
so (``reason``), a cohort's says which (``cohort``), so the server counts them in neither arm
or in their cohort's stage; an ordinary outcome carries neither field."""

from __future__ import annotations

import time
from collections.abc import Callable

import turnout

from tests.sdk.conftest import FakeTurnout, plan_entry

MakeClient = Callable[..., turnout.Client]


def test_targeted_outcomes_are_marked(fake: FakeTurnout, make_client: MakeClient) -> None:
    fake.set_plans(
        [
            {
                **plan_entry("chat", weight_bp=0),
                "rules": [
                    {"when": [{"attribute": "tenant", "op": "equals", "value": "bank"}], "then": "exclude"},
                    {"when": [{"attribute": "internal", "op": "equals", "value": True}], "then": "cohort", "cohort": "internal"},
                ],
                "cohorts": {"internal": 10_000},
                "overrides": {"qa": {"arm": "candidate", "expires": time.time() + 600}},
            }
        ]
    )  # fmt: skip
    client = make_client(stream=False)
    decisions = [
        client.decide("chat", "u1", attributes={"tenant": "bank"}),
        client.decide("chat", "qa"),
        client.decide("chat", "u2", attributes={"internal": True}),
        client.decide("chat", "u3", attributes={"tenant": "shop"}),
    ]
    assert [(d.arm, d.reason, d.cohort) for d in decisions] == [
        ("control", "EXCLUDED", None),
        ("candidate", "OVERRIDE", None),
        ("candidate", "SPLIT", "internal"),
        ("control", "SPLIT", None),
    ]
    for decision in decisions:
        client.report(decision, latency_ms=100.0)
    assert client.flush(timeout=10)
    events = [e for batch in fake.batches for e in batch["payload"]["events"]]
    marks = [(e.get("reason"), e.get("cohort")) for e in events]
    assert marks == [("EXCLUDED", None), ("OVERRIDE", None), (None, "internal"), (None, None)]
