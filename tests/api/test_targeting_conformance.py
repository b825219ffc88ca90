"""targeting-v1.json through the server: /api/v1/decide with the vector's attributes and OFREP
with them as the evaluation context answer every vector as the SDK does, on a snapshot made of
the file's plans (served from memory as a real one is); attributes the server refuses get 400
(validation_failed, OFREP INVALID_CONTEXT)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from turnout import routing
from turnout.conformance import load_targeting

from migrations_app.api import ofrep, sdk
from migrations_app.routing.snapshots import Served

pytestmark = pytest.mark.django_db(transaction=True)

DATA = load_targeting()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Served:
    data = {"schema": 1, "version": "targeting-v1", "plans": DATA["plans"]}
    body = json.dumps(data).encode()
    snapshot = Served(
        data=data, body=body, etag='"targeting-v1"', parsed=routing.parse_snapshot(data)
    )
    for module in (sdk, ofrep):
        monkeypatch.setattr(module, "served_snapshot", lambda *args, **kwargs: snapshot)
    return snapshot


def _post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, json.dumps(body), content_type="application/json")


def test_every_vector_through_decide_and_ofrep(api: Client, served: Served) -> None:
    checked = refused = 0
    for vector in DATA["vectors"]:
        if vector.get("exact_clock"):
            continue  # the server's clock is now, not the file's
        unit, attributes, e = vector["unit"], vector["attributes"], vector["expected"]
        decided = _post(
            api, "/api/v1/decide", {"plan": vector["plan"], "unit": unit, "attributes": attributes}
        )
        context = {"targetingKey": unit, **attributes}
        flag = _post(api, f"/ofrep/v1/evaluate/flags/{vector['plan']}", {"context": context})
        if vector.get("server_refuses"):
            assert decided.status_code == 400 and decided.json()["code"] == "validation_failed"
            assert flag.status_code == 400 and flag.json()["errorCode"] == "INVALID_CONTEXT"
            refused += 1
            continue
        if unit == "":
            # an empty unit is no unit to the server (/decide: a required field; OFREP:
            # TARGETING_KEY_MISSING); the SDK routes it
            assert decided.status_code == 400 and flag.status_code == 400
            continue
        assert decided.status_code == 200, decided.content
        body = decided.json()
        assert (body["arm"], body["shadow"], body["reason"], body["cohort"]) == (
            e["arm"], e["shadow"], e["reason"], e["cohort"],
        ), vector  # fmt: skip
        assert flag.status_code == 200, flag.content
        value = flag.json()["value"]
        assert (flag.json()["variant"], value["reason"], value["cohort"]) == (
            e["arm"],
            e["reason"],
            e["cohort"],
        )
        checked += 1
    assert checked >= 300 and refused >= 5
