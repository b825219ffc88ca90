"""The SDK's report carries the unit's segment values (issue 16, item 6): for a plan declaring
segment dimensions, each outcome has {dimension: value} from the decision's attributes (the
declared ones only, as strings; values that are not scalars, or too long, left out); a plan
without dimensions, or a decision without attributes, reports none. Malformed dimensions in
a snapshot are no dimensions, never a refused plan."""

from __future__ import annotations

from collections.abc import Callable

import turnout
from turnout import routing

from tests.sdk.conftest import FakeTurnout, plan_entry

MakeClient = Callable[..., turnout.Client]


def test_outcomes_carry_segment_values(fake: FakeTurnout, make_client: MakeClient) -> None:
    fake.set_plans(
        [
            {**plan_entry("chat", weight_bp=5_000), "segments": ["tenant", "lang", "beta"]},
            plan_entry("plain", weight_bp=5_000),
        ]
    )
    client = make_client(stream=False)
    attributes = {"tenant": "acme", "lang": "ja", "beta": True, "tier": "pro"}
    decisions = [
        client.decide("chat", "u1", attributes=attributes),
        client.decide("chat", "u2", attributes={"tenant": {"nested": 1}, "lang": "x" * 65}),
        # A lone surrogate (a header decoded with surrogateescape): the server cannot store it.
        client.decide("chat", "u5", attributes={"tenant": "bad\udc80", "lang": "a\x00"}),
        client.decide("chat", "u3"),
        client.decide("plain", "u4", attributes=attributes),
    ]
    assert decisions[0].segments == {"tenant": "acme", "lang": "ja", "beta": "true"}
    assert [d.segments for d in decisions[1:]] == [None, None, None, None]
    for decision in decisions:
        client.report(decision, latency_ms=100.0)
    assert client.flush(timeout=10)
    events = [e for batch in fake.batches for e in batch["payload"]["events"]]
    assert [e.get("segments") for e in events] == [
        {"tenant": "acme", "lang": "ja", "beta": "true"},
        None,
        None,
        None,
        None,
    ]


def test_malformed_dimensions_are_none() -> None:
    base = plan_entry("chat", weight_bp=5_000)
    for bad in ("tenant", [1, None, ""], {"a": 1}):
        assert routing.parse_plan({**base, "segments": bad}).segments == ()
    many = routing.parse_plan({**base, "segments": ["a", "b", "c", "d"]})
    assert many.segments == ("a", "b", "c")
