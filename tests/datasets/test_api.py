"""The datasets API: make, list, read (paged), delete; scopes and plan-limited keys; every bad
body a 4xx with a stable code naming the field, storing nothing."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest
from django.test import Client

from migrations_app.api.keys import apikey_create
from migrations_app.datasets import selectors
from migrations_app.datasets.validation import MAX_ITEMS
from migrations_app.models import Dataset, DatasetItem
from tests.datasets.conftest import item, shadow_plan, store_samples
from tests.factories import make_plan

pytestmark = pytest.mark.django_db


def _client(*scopes: str, plans: list[Any] | None = None) -> Client:
    _, key = apikey_create(name="ci", scopes=list(scopes), plans=plans)
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def api() -> Client:
    return _client("plans")


def _post(client: Client, body: Any, **extra: Any) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/api/v1/datasets", data, content_type="application/json", **extra)


def test_make_list_read_page_and_delete(api: Client) -> None:
    made = _post(
        api, {"name": "faq", "description": "FAQ", "items": [item(f"q{i}") for i in range(5)]}
    )
    assert made.status_code == 201, made.content
    body = made.json()
    assert (body["name"], body["version"], body["item_count"], body["source"]) == (
        "faq",
        1,
        5,
        "api",
    )
    assert body["created_by"] == "api key ci" and body["plan"] is None
    assert _post(api, {"name": "faq", "items": [item("again")]}).json()["version"] == 2
    listed = api.get("/api/v1/datasets").json()["datasets"]
    assert [(d["name"], d["version"]) for d in listed] == [("faq", 2), ("faq", 1)]
    assert api.get("/api/v1/datasets?name=none").json() == {"datasets": [], "next_offset": None}
    assert api.get("/api/v1/datasets?name=bad%00name").json()["datasets"] == []
    first = api.get("/api/v1/datasets?limit=1").json()
    assert [d["version"] for d in first["datasets"]] == [2] and first["next_offset"] == 1
    rest = api.get("/api/v1/datasets?limit=1&offset=1").json()
    assert [d["version"] for d in rest["datasets"]] == [1] and rest["next_offset"] is None
    latest = api.get("/api/v1/datasets/faq").json()
    assert (latest["version"], latest["next_offset"]) == (2, None)
    page = api.get("/api/v1/datasets/faq/1?offset=1&limit=2").json()
    assert [i["index"] for i in page["items"]] == [1, 2] and page["next_offset"] == 3
    assert page["items"][0]["request"]["messages"][0]["content"] == "q1"
    last = api.get("/api/v1/datasets/faq/1?offset=3&limit=2").json()
    assert [i["index"] for i in last["items"]] == [3, 4] and last["next_offset"] is None
    assert api.delete("/api/v1/datasets/faq/1").status_code == 204
    assert list(Dataset.objects.values_list("version", flat=True)) == [2]
    gone = api.get("/api/v1/datasets/faq/1")
    assert (gone.status_code, gone.json()["code"]) == (404, "dataset_not_found")


def test_a_gzipped_body_is_taken(api: Client) -> None:
    body = gzip.compress(orjson.dumps({"name": "zipped", "items": [item("a")]}))
    made = _post(api, body, HTTP_CONTENT_ENCODING="gzip")
    assert made.status_code == 201, made.content


def test_a_set_from_shadow_samples(api: Client) -> None:
    plan = shadow_plan()
    store_samples(plan, 6)
    made = _post(api, {"name": "week", "plan": plan.key, "shadow": {"size": 4, "seed": 3}})
    assert made.status_code == 201, made.content
    body = made.json()
    assert (body["source"], body["plan"], body["item_count"]) == ("shadow", plan.key, 4)
    assert body["filter"]["seed"] == 3 and body["expires_at"] is not None
    items = api.get("/api/v1/datasets/week").json()["items"]
    assert all(i["control_answer"].startswith("Answer") and i["sample_id"] for i in items)


def test_a_set_from_a_plan_with_no_samples_is_refused(api: Client) -> None:
    plan = shadow_plan()
    refused = _post(api, {"name": "week", "plan": plan.key, "shadow": {}})
    assert refused.status_code == 400
    body = refused.json()
    assert body["code"] == "validation_failed" and "plan" in body["details"]["fields"]
    assert "no stored shadow samples" in body["message"]
    assert not Dataset.objects.exists()


def _many(count: int) -> list[dict[str, Any]]:
    return [{"request": {"messages": [{"role": "user", "content": "q"}]}}] * count


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ([], 400, "validation_failed", "body"),
        ({"items": [item()]}, 400, "validation_failed", "name"),
        ({"name": "Bad Name", "items": [item()]}, 400, "validation_failed", "name"),
        ({"name": "ok", "items": [item()], "owner": "me"}, 400, "validation_failed", "owner"),
        ({"name": "ok"}, 400, "validation_failed", "items"),
        ({"name": "ok", "items": []}, 400, "validation_failed", "items"),
        ({"name": "ok", "items": {"0": item()}}, 400, "validation_failed", "items"),
        ({"name": "ok", "items": [item()], "shadow": {}}, 400, "validation_failed", "items"),
        ({"name": "ok", "shadow": {}}, 400, "validation_failed", "plan"),
        ({"name": "ok", "plan": "nope", "shadow": {}}, 404, "plan_not_found", "plan"),
        ({"name": "ok", "plan": "nope", "items": [item()]}, 404, "plan_not_found", "plan"),
        ({"name": "ok", "items": [item(), item(tags=["x" * 65])]}, 400, "validation_failed", "items[1] tags[0]"),
        (
            {"name": "ok", "items": [{"request": {"messages": [{"role": "user", "content": "x"}], "params": {"n": 1000}}}]},
            400, "validation_failed", "items[0] request.params.n",
        ),
        (
            {"name": "ok", "items": [{"request": {"messages": [{"role": "developer", "content": "x"}]}}]},
            400, "validation_failed", "items[0] request.messages",
        ),
        ({"name": "ok", "items": [item(control_answer=3)]}, 400, "validation_failed", "items[0] control_answer"),
        ({"name": "ok", "items": _many(MAX_ITEMS + 1)}, 413, "batch_too_large", "items"),
        ({"name": "ok", "plan": "x", "shadow": {"size": 0}}, 400, "validation_failed", "shadow.size"),
        ({"name": "ok", "plan": "x", "shadow": {"since": "yesterday"}}, 400, "validation_failed", "shadow.since"),
    ],
)  # fmt: skip
def test_bad_bodies_are_refused_naming_the_field(
    api: Client, body: Any, status: int, code: str, field: str
) -> None:
    answer = _post(api, body)
    assert answer.status_code == status, answer.content
    error = answer.json()
    assert error["code"] == code, error
    details = error["details"]
    assert field in details.get("fields", {}) or details.get("field") == field, error
    assert not Dataset.objects.exists() and not DatasetItem.objects.exists()


def test_nul_bytes_and_bad_json_are_refused(api: Client) -> None:
    nul = _post(
        api,
        b'{"name": "ok", "items": [{"request": {"messages": [{"role": "user", "content": "a\\u0000"}]}}]}',
    )
    assert nul.status_code == 400
    assert list(nul.json()["details"]["fields"]) == ["items[0] request.messages[0].content"]
    broken = _post(api, b'{"name": ')
    assert (broken.status_code, broken.json()["code"]) == (400, "parse_error")
    assert not Dataset.objects.exists()


def test_nan_or_infinity_in_a_response_format_is_refused_not_a_500(api: Client) -> None:
    for number in (b"NaN", b"Infinity", b"-1e999"):
        body = (
            b'{"name": "s", "items": [{"request": {"messages": [{"role": "user", "content": '
            b'"q"}], "json_schema": {"type": "number", "maximum": ' + number + b"}}}]}"
        )
        answer = _post(api, body)
        assert answer.status_code == 400, answer.content[:200]
        assert "items[0] request.json_schema" in answer.json()["details"]["fields"]
    assert not Dataset.objects.exists()


def test_scopes_read_with_plans_or_admin_write_with_plans() -> None:
    writer = _client("plans")
    assert _post(writer, {"name": "s", "items": [item()]}).status_code == 201
    reader = _client("admin")
    assert reader.get("/api/v1/datasets/s").status_code == 200
    assert _post(reader, {"name": "s", "items": [item()]}).status_code == 403
    assert reader.delete("/api/v1/datasets/s/1").status_code == 403
    reporter = _client("report")
    assert reporter.get("/api/v1/datasets").status_code == 403
    assert Client().get("/api/v1/datasets").status_code == 401
    assert Dataset.objects.count() == 1


def test_a_key_limited_to_some_plans_sees_and_makes_only_their_sets() -> None:
    mine, other = make_plan("mine"), make_plan("other")
    full = _client("plans")
    assert _post(full, {"name": "a", "items": [item()], "plan": "mine"}).status_code == 201
    assert _post(full, {"name": "b", "items": [item()], "plan": "other"}).status_code == 201
    assert _post(full, {"name": "c", "items": [item()]}).status_code == 201
    limited = _client("plans", plans=[mine])
    assert [d["name"] for d in limited.get("/api/v1/datasets").json()["datasets"]] == ["a"]
    assert limited.get("/api/v1/datasets/b").status_code == 404
    assert limited.get("/api/v1/datasets/c/1").status_code == 404
    assert limited.delete("/api/v1/datasets/b/1").status_code == 404
    refused = _post(limited, {"name": "d", "items": [item()]})
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert _post(limited, {"name": "d", "items": [item()], "plan": "other"}).status_code == 404
    assert _post(limited, {"name": "d", "items": [item()], "plan": "mine"}).status_code == 201
    assert other.pk and Dataset.objects.count() == 4


def test_a_limited_key_cannot_add_a_version_to_another_plans_set() -> None:
    """A plan's replay takes its set's latest version: a key of another plan must not slip
    its own items in as that version (nor as one of a set made for no plan)."""
    mine, other = shadow_plan("mine"), make_plan("other")
    full = _client("plans")
    assert _post(full, {"name": "tickets", "items": [item()], "plan": "other"}).status_code == 201
    assert _post(full, {"name": "shared", "items": [item()]}).status_code == 201
    store_samples(mine, 2)
    limited = _client("plans", plans=[mine])
    for body in (
        {"name": "tickets", "items": [item("poisoned")], "plan": "mine"},
        {"name": "shared", "items": [item("poisoned")], "plan": "mine"},
        {"name": "tickets", "plan": "mine", "shadow": {}},
    ):
        refused = _post(limited, body)
        assert refused.status_code == 409, refused.content
        body = refused.json()
        assert (body["code"], body["details"]["field"]) == ("dataset_name_taken", "name")
    assert selectors.get("tickets").version == 1 and selectors.get("shared").version == 1
    # Its own names still take new versions; an unlimited key may add to any name.
    assert _post(limited, {"name": "own", "items": [item()], "plan": "mine"}).status_code == 201
    assert _post(limited, {"name": "own", "items": [item()], "plan": "mine"}).status_code == 201
    assert _post(full, {"name": "tickets", "items": [item()], "plan": "mine"}).status_code == 201
    assert other.pk and Dataset.objects.count() == 5


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/datasets/faq?offset=-1",
        "/api/v1/datasets/faq?limit=1001",
        "/api/v1/datasets/faq?limit=ten",
    ],
)
def test_bad_page_params_are_refused(api: Client, path: str) -> None:
    _post(api, {"name": "faq", "items": [item()]})
    answer = api.get(path)
    assert (answer.status_code, answer.json()["code"]) == (400, "validation_failed")


def test_versions_out_of_range_are_not_found(api: Client) -> None:
    _post(api, {"name": "faq", "items": [item()]})
    for version in ("0", "99999999999999999999", "v1", "null,null", "-1"):
        answer = api.get(f"/api/v1/datasets/faq/{version}")
        assert (answer.status_code, answer.json()["code"]) == (404, "dataset_not_found")


def test_deleting_a_set_in_use_is_a_409(api: Client) -> None:
    _post(api, {"name": "faq", "items": [item()]})
    pk = Dataset.objects.get().pk

    def check(ids: list[int]) -> set[int]:
        return {pk} & set(ids)

    selectors.register_in_use(check)
    try:
        answer = api.delete("/api/v1/datasets/faq/1")
    finally:
        selectors._in_use_checks.remove(check)
    assert (answer.status_code, answer.json()["code"]) == (409, "dataset_in_use")
    assert Dataset.objects.count() == 1


def test_reading_a_large_set_takes_a_fixed_number_of_queries(
    api: Client, django_assert_max_num_queries: Any
) -> None:
    assert _post(api, {"name": "big", "items": _many(2000)}).status_code == 201
    with django_assert_max_num_queries(6):  # key, set, page (+ key's last use)
        page = api.get("/api/v1/datasets/big?offset=1500&limit=500").json()
    assert [i["index"] for i in page["items"]][::499] == [1500, 1999]
