"""The ingest API over HTTP (Django's test client): bodies, auth, batch limits, bad input, /metrics.

Bad input must always get a 4xx with a stable code (or a per-event rejection), never a 500:
the test client re-raises a view's exception, so a crash fails these tests loudly.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from typing import Any

import pytest
from django.test import Client
from django.test.utils import override_settings
from prometheus_client.parser import text_string_to_metric_families

from migrations_app.api.keys import apikey_create
from migrations_app.models import Feedback, Outcome, StageAggregate
from migrations_app.outcomes import store
from migrations_app.outcomes.segment_rollup import catch_up
from tests.outcomes.conftest import outcome, split_plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def reporter() -> Client:
    key = apikey_create(name="reporter", scopes=["report"])[1]
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def post(client: Client, path: str, body: Any, *, gzipped: bool = False, raw: bool = False) -> Any:
    data = body if raw else json.dumps(body).encode()
    extra = {}
    if gzipped:
        data = gzip.compress(data)
        extra["HTTP_CONTENT_ENCODING"] = "gzip"
    return client.post(path, data=data, content_type="application/json", **extra)


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code and body["message"]
    if field is not None:
        assert body["details"]["field"] == field


def counters(client: Client | None = None) -> dict[tuple[str, tuple[str, ...]], float]:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200
    values: dict[tuple[str, tuple[str, ...]], float] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


# --- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_batch_is_stored_from_a_plain_or_gzip_body(reporter: Client, gzipped: bool) -> None:
    plan = split_plan()
    events = [outcome(plan), outcome(plan, arm="candidate", error="timeout"), outcome(plan)]
    response = post(reporter, "/api/v1/outcomes", {"events": events}, gzipped=gzipped)
    assert response.status_code == 200
    assert response.json() == {"stored": 3, "duplicates": 0, "rejected": []}
    assert Outcome.objects.filter(plan=plan).count() == 3
    again = post(reporter, "/api/v1/outcomes", {"events": events}, gzipped=gzipped)
    assert again.json() == {"stored": 0, "duplicates": 3, "rejected": []}
    catch_up()
    rows = dict(StageAggregate.objects.filter(stage__plan=plan).values_list("arm", "requests"))
    assert rows == {"control": 2, "candidate": 1}


def test_feedback_single_and_batch(reporter: Client) -> None:
    plan = split_plan()
    event = outcome(plan)
    post(reporter, "/api/v1/outcomes", {"events": [event]})
    single = {"id": uuid.uuid4().hex, "decision_id": event["decision_id"], "score": 1,
              "ts": event["ts"]}  # fmt: skip
    assert post(reporter, "/api/v1/feedback", single).json()["stored"] == 1
    batch = {"events": [single, {**single, "id": uuid.uuid4().hex, "score": 7, "scale": "five"}]}
    answer = post(reporter, "/api/v1/feedback", batch, gzipped=True).json()
    assert answer["stored"] == 0 and answer["duplicates"] == 1
    assert [(r["index"], r["field"], r["code"]) for r in answer["rejected"]] == [
        (1, "score", "out_of_range")
    ]
    assert Feedback.objects.get(pk=single["id"]).outcome_id == event["id"]


@override_settings(TURNOUT_INGEST_MAX_BATCH=5)
def test_more_than_the_batch_limit_is_413_and_nothing_is_stored(reporter: Client) -> None:
    plan = split_plan()
    events = [outcome(plan) for _ in range(6)]
    response = post(reporter, "/api/v1/outcomes", {"events": events})
    assert_error(response, 413, "batch_too_large", "events")
    assert response.json()["details"]["max"] == 5
    assert not Outcome.objects.filter(plan=plan).exists()
    assert post(reporter, "/api/v1/outcomes", {"events": events[:5]}).json()["stored"] == 5
    feedback = [{"id": str(i), "decision_id": "d", "score": 1, "ts": 1.0} for i in range(6)]
    assert_error(post(reporter, "/api/v1/feedback", {"events": feedback}), 413, "batch_too_large")


def test_a_gzip_bomb_is_413_and_bad_gzip_is_400(reporter: Client) -> None:
    bomb = gzip.compress(b'{"events": [' + b" " * (20 * 1024 * 1024) + b"]}")
    response = reporter.post(
        "/api/v1/outcomes", data=bomb, content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
    )  # fmt: skip
    assert_error(response, 413, "payload_too_large")
    response = reporter.post(
        "/api/v1/outcomes", data=b"not gzip at all", content_type="application/json",
        HTTP_CONTENT_ENCODING="gzip",
    )  # fmt: skip
    assert_error(response, 400, "parse_error")


# --- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/outcomes", "/api/v1/feedback"])
def test_auth(path: str) -> None:
    plan = split_plan()
    body = {"events": [outcome(plan)]}
    assert_error(post(Client(), path, body), 401, "unauthenticated")
    wrong = Client(HTTP_AUTHORIZATION="Bearer tk_deadbeef_nope")
    assert_error(post(wrong, path, body), 401, "unauthenticated")
    decide_only = apikey_create(name="decider", scopes=["decide"])[1]
    assert_error(post(Client(HTTP_X_API_KEY=decide_only), path, body), 403, "forbidden")
    assert not Outcome.objects.filter(plan=plan).exists()


def test_a_key_restricted_to_other_plans_gets_plan_not_found_per_event() -> None:
    mine, theirs = split_plan(), split_plan()
    key = apikey_create(name="mine-only", scopes=["report"], plans=[mine])[1]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    events = [outcome(theirs), outcome(mine), outcome(theirs)]
    answer = post(client, "/api/v1/outcomes", {"events": events}).json()
    assert answer["stored"] == 1
    assert [(r["index"], r["field"], r["code"]) for r in answer["rejected"]] == [
        (0, "plan", "plan_not_found"),
        (2, "plan", "plan_not_found"),
    ]
    assert not Outcome.objects.filter(plan=theirs).exists()


@pytest.fixture(params=[True, False], ids=["fast", "portable"])
def both_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(store, "FAST_PATH", request.param)


def test_feedback_counts_only_on_the_plans_its_key_may_write(both_paths: None) -> None:
    """A key limited to plan A posted feedback on plan B's decisions and moved B's
    satisfaction: now a decision already stored in another plan is refused per event, and
    feedback held for a decision not yet stored is refused when the outcome arrives."""
    from migrations_app.outcomes import feedback

    mine, theirs = split_plan(), split_plan()
    everything = Client(
        HTTP_AUTHORIZATION=f"Bearer {apikey_create(name='app', scopes=['report'])[1]}"
    )
    limited = Client(
        HTTP_AUTHORIZATION="Bearer "
        + apikey_create(name="mine-only", scopes=["report"], plans=[mine])[1]
    )
    stored_theirs, stored_mine = outcome(theirs), outcome(mine)
    post(everything, "/api/v1/outcomes", {"events": [stored_theirs, stored_mine]})
    late_theirs, late_mine = outcome(theirs), outcome(mine)

    def rating(event: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "decision_id": event["decision_id"],
            "score": -1,
            "ts": time.time(),
        }

    ratings = [rating(e) for e in (stored_theirs, stored_mine, late_theirs, late_mine)]
    answer = post(limited, "/api/v1/feedback", {"events": ratings}).json()
    assert (answer["stored"], answer["duplicates"]) == (3, 0)
    assert [(r["index"], r["field"], r["code"]) for r in answer["rejected"]] == [
        (0, "decision_id", "plan_not_found")
    ]
    assert not Feedback.objects.filter(pk=ratings[0]["id"]).exists()

    # The outcomes of the held two arrive (from the application's own key).
    post(everything, "/api/v1/outcomes", {"events": [late_theirs, late_mine]})
    assert feedback.apply_held_feedback() == 0  # nothing left for the sweeper either

    def feedback_n(plan: Any) -> int:
        catch_up()
        rows = StageAggregate.objects.filter(stage=plan.current_stage)
        return sum(r.data.get("feedback_n", 0) for r in rows)

    assert (feedback_n(mine), feedback_n(theirs)) == (2, 0)
    refused = Feedback.objects.get(pk=ratings[2]["id"])
    assert refused.outcome_id is None and refused.refused
    assert Feedback.objects.get(pk=ratings[3]["id"]).outcome_id == late_mine["id"]


def test_feedback_from_a_key_for_every_plan_counts_anywhere(both_paths: None) -> None:
    plan = split_plan()
    key = Client(HTTP_AUTHORIZATION=f"Bearer {apikey_create(name='app', scopes=['report'])[1]}")
    event = outcome(plan)
    rating = {
        "id": uuid.uuid4().hex,
        "decision_id": event["decision_id"],
        "score": 1,
        "ts": time.time(),
    }
    assert post(key, "/api/v1/feedback", rating).json()["stored"] == 1  # held
    post(key, "/api/v1/outcomes", {"events": [event]})
    assert Feedback.objects.get(pk=rating["id"]).outcome_id == event["id"]


# --- bodies that are not batches ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/outcomes", "/api/v1/feedback"])
@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"{not json", "parse_error", None),
        (b"", "parse_error", None),
        (b"\xff\xfe\x00garbage\x80", "parse_error", None),
        (b'{"events": [' + b"9" * 5000 + b"]}", "parse_error", None),  # beyond int digit limit
        (b"[" * 100_000 + b"]" * 100_000, "parse_error", None),  # nesting beyond recursion
        (b"[]", "validation_failed", "events"),
        (b"null", "validation_failed", "events"),
        (b'"events"', "validation_failed", "events"),
        (b'{"events": {"0": {}}}', "validation_failed", "events"),
        (b'{"events": "many"}', "validation_failed", "events"),
        (b'{"evnts": []}', "validation_failed", "events"),
    ],
)
def test_a_body_that_is_not_a_batch_is_400_naming_the_field(
    reporter: Client, path: str, body: bytes, code: str, field: str | None
) -> None:
    for gzipped in (False, True):
        response = post(reporter, path, body, raw=True, gzipped=gzipped)
        assert_error(response, 400, code, field)


# --- events that are bad in every way we could think of ----------------------------------

NASTY_VALUES: list[Any] = [
    None, True, 0, -1, 10**30, -(10**30), 10**400, 1e308, -0.0, "NaN", "", "x" * 100_000,
    "\x00", "a\x00b", "\ud800", "ünïcødé ✓ 🚀", [], [1, [2, [3]]], {}, {"a": {"b": {"c": []}}},
]  # fmt: skip
NAN_LITERALS = ["NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("depth", [5_000, 1_000])
def test_deep_nesting_anywhere_is_a_4xx_never_a_500(reporter: Client, depth: int) -> None:
    """Past 1,024 levels orjson refuses and Python's parser overflows (parse_error); under
    that a value is read, and one that is stored (a shadow sample's JSON schema) overflowed
    the encoder on its way to the database."""
    from tests.shadow.test_shadow import sample, shadow_plan

    deep = "[" * depth + "]" * depth
    plan, shadowed = split_plan(), shadow_plan()
    event = json.dumps(outcome(plan))[:-1] + f', "extra": {deep}}}'
    answers = [
        post(reporter, "/api/v1/outcomes", f'{{"events": [{event}]}}'.encode(), raw=True),
        post(reporter, "/api/v1/feedback", f'{{"events": [{{"x": {deep}}}]}}'.encode(), raw=True),
    ]
    bad, good = sample(shadowed), sample(shadowed)
    bad["request"]["json_schema"] = {"type": "object", "properties": "@"}
    body = json.dumps({"samples": [bad, good]}).replace('"@"', deep)
    answers.append(post(reporter, "/api/v1/shadow-samples", body.encode(), raw=True))
    for answer in answers:
        assert answer.status_code in (200, 400), answer.content[:300]
        if answer.status_code == 400:
            assert answer.json()["code"] == "parse_error"
    if depth < 1024:  # read: each event answered on its own
        assert answers[0].json()["stored"] == 1
        shadow_answer = answers[2].json()
        assert shadow_answer["stored"] == 1
        assert [(r["index"], r["field"]) for r in shadow_answer["rejected"]] == [
            (0, "request.json_schema")
        ]


def test_no_field_value_gives_a_500_and_the_good_neighbour_is_stored(reporter: Client) -> None:
    plan = split_plan()
    fields = ["id", "decision_id", "plan", "run", "plan_version", "arm", "unit", "ts",
              "latency_ms", "ttft_ms", "error", "input_tokens", "output_tokens"]  # fmt: skip
    stored = 0
    for name in fields:
        events = [{**outcome(plan), name: value} for value in NASTY_VALUES]
        good = outcome(plan)
        answer = post(reporter, "/api/v1/outcomes", {"events": [*events, good]}).json()
        rejected = {r["index"]: r for r in answer["rejected"]}
        assert len(events) not in rejected, (name, answer)
        for r in rejected.values():
            assert r["field"] in (name, "event") and r["code"] and r["message"]
        stored += answer["stored"]
    # Only values that are valid for their field were stored (e.g. a unicode unit or id).
    assert Outcome.objects.filter(plan=plan).count() == stored


def test_nan_and_infinity_literals_are_rejected_per_event(reporter: Client) -> None:
    plan = split_plan()
    for literal in NAN_LITERALS:
        for name in ("latency_ms", "ttft_ms", "ts", "input_tokens", "run"):
            event = {**outcome(plan), name: "@@"}
            body = '{"events": [' + json.dumps(event).replace('"@@"', literal) + "]}"
            answer = post(reporter, "/api/v1/outcomes", body.encode(), raw=True).json()
            assert answer["stored"] == 0
            assert [(r["field"], r["code"]) for r in answer["rejected"]] in (
                [(name, "invalid")],
                [(name, "out_of_range")],
            ), (literal, name, answer)
    body = '{"events": [{"id": "f", "decision_id": "d", "score": NaN, "ts": 1.0}]}'
    answer = post(reporter, "/api/v1/feedback", body.encode(), raw=True).json()
    assert [(r["field"], r["code"]) for r in answer["rejected"]] == [("score", "invalid")]


def test_no_feedback_value_gives_a_500(reporter: Client) -> None:
    plan = split_plan()
    event = outcome(plan)
    post(reporter, "/api/v1/outcomes", {"events": [event]})
    base = {"decision_id": event["decision_id"], "score": 1, "scale": "thumbs", "ts": event["ts"]}
    stored = 0
    for name in ("id", "decision_id", "score", "scale", "ts"):
        events = [{**base, "id": uuid.uuid4().hex, name: value} for value in NASTY_VALUES]
        answer = post(reporter, "/api/v1/feedback", {"events": events}).json()
        for r in answer["rejected"]:
            assert r["field"] == name and r["code"] and r["message"]
        stored += answer["stored"]
    assert Feedback.objects.count() == stored


def test_junk_in_the_client_object_is_ignored(reporter: Client) -> None:
    plan = split_plan()
    for client in (None, "x", [], {"dropped": "7"}, {"dropped": 10**400}, {"dropped": -3},
                   {"dropped": 1e400}, {"dropped": True}):  # fmt: skip
        answer = post(reporter, "/api/v1/outcomes", {"client": client, "events": [outcome(plan)]})
        assert answer.json()["stored"] == 1


# --- /metrics ----------------------------------------------------------------------------


def test_metrics_count_stored_duplicates_rejected_and_sdk_drops(reporter: Client) -> None:
    plan = split_plan()
    before = counters()
    events = [outcome(plan), outcome(plan)]
    body = {"client": {"sdk": "turnout-python/0.1.0", "dropped": 7}, "events": events}
    post(reporter, "/api/v1/outcomes", body)
    post(reporter, "/api/v1/outcomes", {"events": [*events, outcome(plan, arm="x")]})
    post(reporter, "/api/v1/feedback", {"events": [{"id": "f", "decision_id": "d", "score": 1}]})
    after = counters()

    events_total = "turnout_ingest_events_total"
    assert delta(before, after, events_total, kind="outcomes", result="stored") == 2
    assert delta(before, after, events_total, kind="outcomes", result="duplicate") == 2
    assert delta(before, after, events_total, kind="outcomes", result="rejected") == 1
    assert delta(before, after, events_total, kind="feedback", result="rejected") == 1
    rejected = "turnout_ingest_rejected_total"
    assert delta(before, after, rejected, kind="outcomes", code="invalid") == 1
    assert delta(before, after, rejected, kind="feedback", code="required") == 1
    assert delta(before, after, "turnout_sdk_dropped_events_total") == 7
    assert ("turnout_feedback_held", ()) in after


def test_metrics_are_refused_to_strangers() -> None:
    stranger = Client(REMOTE_ADDR="10.1.2.3")
    response = stranger.get("/metrics")
    assert response.status_code == 403
    with override_settings(TURNOUT_METRICS_TOKEN="scrape-me"):
        assert stranger.get("/metrics").status_code == 401
        assert Client().get("/metrics").status_code == 401  # a token is a token, even locally
        wrong = Client(REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer nope")
        assert wrong.get("/metrics").status_code == 401
        right = Client(REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer scrape-me")
        response = right.get("/metrics")
        assert response.status_code == 200
        assert b"turnout_ingest_events_total" in response.content


def test_counters_without_labels_show_zero_before_their_first_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alert on turnout_fold_failures_total's increase must see the first failure: the
    series is there at 0 before it, not appearing at 1 (which an increase() does not count)."""
    from migrations_app.outcomes import metrics

    monkeypatch.setattr(metrics, "read_counters", dict)  # nothing counted yet
    values = counters()
    assert values[("turnout_fold_failures_total", ())] == 0
    assert values[("turnout_sdk_dropped_events_total", ())] == 0
    assert not any(name == "turnout_ingest_events_total" for name, _ in values)


def test_metrics_show_the_pending_rows_and_the_folds_that_failed(
    reporter: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest answers 200 whether or not the fold after it succeeds (its rows wait): a fold that
    keeps failing shows as a growing pending count and age, and as failures counted."""
    from migrations_app.outcomes import segment_rollup, window_rollup

    plan = split_plan()
    post(reporter, "/api/v1/outcomes", {"events": [outcome(plan), outcome(plan)]})
    before = counters()
    assert before[("turnout_pending_rollup_rows", ())] == 1  # this test's transaction: no fold yet
    assert before[("turnout_pending_rollup_oldest_seconds", ())] >= 0.0

    def broken(deltas: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(window_rollup, "merge", broken)
    assert not segment_rollup.catch_up([plan.current_stage_id])
    after = counters()
    assert delta(before, after, "turnout_fold_failures_total") == 1
    assert after[("turnout_pending_rollup_rows", ())] == 1  # kept for the next fold
    monkeypatch.undo()
    assert segment_rollup.catch_up([plan.current_stage_id])
    assert counters()[("turnout_pending_rollup_rows", ())] == 0
