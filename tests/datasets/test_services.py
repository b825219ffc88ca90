"""Making datasets: versions, JSONL uploads (each bad line named, nothing stored), sets drawn
from a plan's shadow samples, deletion refused while in use, retention."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.utils import timezone

from migrations_app.datasets import selectors, services
from migrations_app.datasets.retention import dataset_purge
from migrations_app.datasets.validation import MAX_FILE_BYTES, MAX_ITEMS
from migrations_app.errors import DomainError, ValidationFailed
from migrations_app.models import (
    Dataset,
    DatasetItem,
    MigrationPlan,
    ReplayRun,
    ShadowSample,
)
from tests.datasets.conftest import item, shadow_plan, store_samples
from tests.factories import make_plan
from tests.races import first_holds_the_lock

pytestmark = pytest.mark.django_db


def _jsonl(*rows: Any) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else orjson.dumps(r) for r in rows) + b"\n"


def _upload(data: bytes, name: str = "support", **kw: Any) -> Dataset:
    return services.dataset_upload(name=name, data=data, created_by="alice", **kw)


def test_a_new_upload_under_a_name_is_its_next_version() -> None:
    first = _upload(_jsonl(item("a"), item("b", reference="B", tags=["x"])))
    second = _upload(_jsonl(item("a"), item("b", reference="B", tags=["x"])))
    third = _upload(_jsonl(item("c")), description="smaller")
    assert [(d.version, d.item_count) for d in (first, second, third)] == [(1, 2), (2, 2), (3, 1)]
    assert first.digest == second.digest != third.digest
    assert (first.source, first.created_by, first.expires_at) == ("upload", "alice", None)
    assert first.tag_counts == {"x": 1}
    assert selectors.get("support").version == 3
    assert selectors.get("support", 1).pk == first.pk
    stored = list(selectors.items(first))
    assert [i.index for i in stored] == [0, 1]
    assert stored[1].reference == "B" and stored[1].tags == ["x"]
    assert stored[0].request["messages"] == [{"role": "user", "content": "a"}]
    with pytest.raises(DomainError) as missing:
        selectors.get("support", 9)
    assert (missing.value.code, missing.value.status) == ("dataset_not_found", 404)


def test_every_bad_line_is_named_by_its_number_and_nothing_is_stored() -> None:
    data = _jsonl(
        item("fine"),
        b"{not json",
        item("fine again"),
        {"request": {"messages": [{"role": "user", "content": "x"}], "params": {"api_key": "k"}}},
        b"[1, 2]",
        {"request": {"messages": [{"role": "root", "content": "x"}]}},
    )
    with pytest.raises(ValidationFailed) as refused:
        _upload(data)
    problems = refused.value.details["problems"]
    assert [(p["where"], p["field"]) for p in problems] == [
        ("line 2", "line"),
        ("line 4", "request.params.api_key"),
        ("line 5", "line"),
        ("line 6", "request.messages"),
    ]
    assert problems[1]["code"] == "param_not_allowed"
    assert refused.value.message.startswith("line 2: line: Not valid JSON")
    assert not Dataset.objects.exists() and not DatasetItem.objects.exists()


def test_blank_lines_crlf_and_a_byte_order_mark_are_read_and_lines_keep_their_numbers() -> None:
    data = b"\xef\xbb\xbf" + orjson.dumps(item("a")) + b"\r\n\r\n" + b"nope\r\n"
    with pytest.raises(ValidationFailed) as refused:
        _upload(data)
    assert [p["where"] for p in refused.value.details["problems"]] == ["line 3"]
    fixed = _upload(data.replace(b"nope", orjson.dumps(item("b"))))
    assert fixed.item_count == 2


def test_bad_utf8_and_nul_bytes_are_refused_by_line() -> None:
    bad_bytes = b'{"request": {"messages": [{"role": "user", "content": "\xff"}]}}'
    nul = orjson.dumps(item("a\x00b"))
    with pytest.raises(ValidationFailed) as refused:
        _upload(_jsonl(item("ok"), bad_bytes, nul))
    problems = refused.value.details["problems"]
    assert [(p["where"], p["field"]) for p in problems] == [
        ("line 2", "line"),
        ("line 3", "request.messages[0].content"),
    ]
    assert not Dataset.objects.exists()


def test_json_nested_too_deep_is_refused_by_line() -> None:
    deep = b'{"request": ' + b"[" * 70 + b"]" * 70 + b"}"
    past_the_stack = b"[" * 200_000
    with pytest.raises(ValidationFailed) as refused:
        _upload(_jsonl(item("ok"), deep, past_the_stack))
    problems = refused.value.details["problems"]
    assert [(p["where"], p["field"]) for p in problems] == [("line 2", "line"), ("line 3", "line")]
    assert "nested" in problems[0]["message"]


def test_empty_oversized_and_too_long_files_are_refused() -> None:
    with pytest.raises(ValidationFailed) as empty:
        _upload(b"\n\n")
    assert empty.value.details["fields"] == {"items": ["At least one item."]}
    with pytest.raises(DomainError) as big:
        _upload(b" " * (MAX_FILE_BYTES + 1))
    assert (big.value.status, big.value.code) == (413, "payload_too_large")
    assert big.value.details["field"] == "file"
    line = orjson.dumps(item("x"))
    with pytest.raises(DomainError) as many:
        _upload(b"\n".join([line] * (MAX_ITEMS + 1)))
    assert (many.value.status, many.value.code) == (413, "batch_too_large")
    long_line = orjson.dumps(item("x" * (1024 * 1024)))
    with pytest.raises(ValidationFailed) as long:
        _upload(_jsonl(item("ok"), long_line))
    assert long.value.details["problems"][0]["where"] == "line 2"
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(
    ("name", "description", "field"),
    [("Bad Name", "", "name"), ("ok", "x" * 2001, "description"), ("ok", "a\x00", "description")],
)
def test_a_bad_name_or_description_is_refused(name: str, description: str, field: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        services.dataset_create(name=name, items=[item()], created_by="k", description=description)
    assert set(refused.value.details["fields"]) == {field}


def test_items_given_for_a_plan_are_checked_for_its_candidate() -> None:
    plan = make_plan()  # candidate: Anthropic (no seed)
    with pytest.raises(ValidationFailed) as refused:
        services.dataset_create(
            name="seeded",
            items=[
                item(),
                {
                    "request": {
                        "messages": [{"role": "user", "content": "x"}],
                        "params": {"seed": 1},
                    }
                },
            ],
            created_by="k",
            plan=plan,
        )
    assert list(refused.value.details["fields"]) == ["items[1] request.params.seed"]
    made = services.dataset_create(name="seeded", items=[item()], created_by="k", plan=plan)
    assert made.plan_id == plan.pk and made.source == "api"


# --- from shadow samples --------------------------------------------------------------------


def test_a_plan_with_no_samples_is_refused_naming_what_to_fix() -> None:
    plan = shadow_plan()
    with pytest.raises(ValidationFailed) as refused:
        services.dataset_from_shadow(plan=plan, name="week", created_by="alice")
    assert refused.value.details["fields"].keys() == {"plan"}
    assert "no stored shadow samples" in refused.value.message
    assert "Run a shadow phase" in refused.value.message
    assert not Dataset.objects.exists()


def test_a_set_drawn_from_shadow_samples_records_controls_answers_redacted() -> None:
    plan = shadow_plan(redaction_patterns=[r"order \d+"], shadow_retention_days=7)
    ids = store_samples(plan, 3)
    failed = store_samples(plan, 1, error="server_error")
    made = services.dataset_from_shadow(plan=plan, name="week", created_by="alice")
    assert (made.source, made.plan_id, made.item_count) == ("shadow", plan.pk, 4)
    items = list(selectors.items(made))
    assert [i.sample_id for i in items] == [*ids, *failed]
    assert items[0].request["messages"] == [{"role": "user", "content": "Question 0: [redacted]?"}]
    assert items[0].request["params"] == {"temperature": 0.2}
    assert items[0].control_answer == "Answer 0"
    assert items[3].control_answer is None  # control failed: no answer to compare with
    expected = timezone.now() + timedelta(days=7)
    assert abs((made.expires_at - expected).total_seconds()) < 60
    assert made.filter["matched"] == 4 and made.filter["skipped"] == 0


def test_the_filter_time_range_tags_and_a_seeded_draw() -> None:
    plan = shadow_plan(segment_dimensions=["tenant", "lang"])
    now = time.time()
    old = store_samples(plan, 5, ts=now - 3 * 86400, segments={"tenant": "acme", "lang": "fr"})
    acme = store_samples(plan, 20, ts=now - 3600, segments={"tenant": "acme", "lang": "en"})
    shop = store_samples(plan, 10, ts=now - 3600, segments={"tenant": "shop", "lang": "en"})
    since = timezone.now() - timedelta(days=1)
    recent = services.dataset_from_shadow(plan=plan, name="recent", created_by="a", since=since)
    assert {i.sample_id for i in selectors.items(recent)} == set(acme + shop)
    assert recent.tag_counts == {"lang=en": 30, "tenant=acme": 20, "tenant=shop": 10}
    tagged = services.dataset_from_shadow(
        plan=plan, name="acme", created_by="a", tags=["tenant=acme", "lang=en"]
    )
    assert {i.sample_id for i in selectors.items(tagged)} == set(acme)
    until = services.dataset_from_shadow(plan=plan, name="old", created_by="a", until=since)
    assert {i.sample_id for i in selectors.items(until)} == set(old)
    assert list(selectors.items(until))[0].tags == ["lang=fr", "tenant=acme"]
    draws = [
        [
            i.sample_id
            for i in selectors.items(
                services.dataset_from_shadow(plan=plan, name="draw", created_by="a", size=8, seed=s)
            )
        ]
        for s in (1, 1, 2)
    ]
    assert len(draws[0]) == 8 and len(set(draws[0])) == 8
    assert draws[0] == draws[1] != draws[2]  # the seed decides the draw
    assert set(draws[0]) <= set(old + acme + shop)
    with pytest.raises(ValidationFailed) as none_tagged:
        services.dataset_from_shadow(plan=plan, name="x", created_by="a", tags=["tenant=nobody"])
    assert none_tagged.value.details["fields"].keys() == {"tags"}
    with pytest.raises(ValidationFailed) as none_in_range:
        services.dataset_from_shadow(
            plan=plan, name="x", created_by="a", since=timezone.now() + timedelta(days=1)
        )
    assert none_in_range.value.details["fields"].keys() == {"since"}


def test_samples_stored_before_the_params_rule_are_left_out() -> None:
    plan = shadow_plan()
    store_samples(plan, 2)
    sample = ShadowSample.objects.filter(plan=plan).order_by("created_at").first()
    sample.request = {**sample.request, "params": {"api_key": "sk-old"}}
    sample.save(update_fields=["request"])
    made = services.dataset_from_shadow(plan=plan, name="x", created_by="a")
    assert made.item_count == 1 and made.filter["skipped"] == 1
    assert sample.sample_id not in {i.sample_id for i in selectors.items(made)}


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"size": 0}, "size"), ({"size": MAX_ITEMS + 1}, "size"), ({"tags": ["a b "]}, "tags[0]")],
)
def test_a_bad_filter_is_refused(kw: dict[str, Any], field: str) -> None:
    plan = shadow_plan()
    store_samples(plan, 1)
    with pytest.raises(ValidationFailed) as refused:
        services.dataset_from_shadow(plan=plan, name="x", created_by="a", **kw)
    assert refused.value.details["fields"].keys() == {field}


# --- deletion and retention -------------------------------------------------------------------


@pytest.fixture
def replay_uses() -> Any:
    """A replay's in-use check, as the replay registers its own: the ids in the set given."""
    used: set[int] = set()

    def check(ids: list[int]) -> set[int]:
        return used & set(ids)

    selectors.register_in_use(check)
    yield used
    selectors._in_use_checks.remove(check)


def test_a_set_a_replay_uses_is_not_deleted(replay_uses: set[int]) -> None:
    made = services.dataset_create(name="s", items=[item(), item()], created_by="k")
    replay_uses.add(made.pk)
    with pytest.raises(DomainError) as refused:
        services.dataset_delete(dataset=made)
    assert (refused.value.status, refused.value.code) == (409, "dataset_in_use")
    assert DatasetItem.objects.filter(dataset=made).count() == 2
    replay_uses.clear()
    services.dataset_delete(dataset=made)
    assert not Dataset.objects.exists() and not DatasetItem.objects.exists()


def test_retention_deletes_expired_shadow_sets_but_not_pinned_used_or_uploaded_ones(
    replay_uses: set[int],
) -> None:
    plan = shadow_plan(shadow_retention_days=3)
    store_samples(plan, 2)
    expiring = services.dataset_from_shadow(plan=plan, name="a", created_by="a")
    pinned = services.dataset_from_shadow(plan=plan, name="b", created_by="a")
    used = services.dataset_from_shadow(plan=plan, name="c", created_by="a")
    uploaded = services.dataset_create(name="d", items=[item()], created_by="k")
    assert services.dataset_pin(dataset=pinned) and not services.dataset_pin(dataset=pinned)
    replay_uses.add(used.pk)
    assert dataset_purge(now=timezone.now() + timedelta(days=2)) == 0
    assert dataset_purge(now=timezone.now() + timedelta(days=4)) == 1
    left = set(Dataset.objects.values_list("name", flat=True))
    assert left == {"b", "c", "d"}
    assert not DatasetItem.objects.filter(dataset_id=expiring.pk).exists()
    replay_uses.clear()
    assert dataset_purge(now=timezone.now() + timedelta(days=4)) == 1
    assert set(Dataset.objects.values_list("pk", flat=True)) == {pinned.pk, uploaded.pk}


def test_a_set_outlives_its_plan() -> None:
    plan = shadow_plan()
    store_samples(plan, 1)
    made = services.dataset_from_shadow(plan=plan, name="kept", created_by="a")
    MigrationPlan.objects.filter(pk=plan.pk).delete()
    made.refresh_from_db()
    assert made.plan_id is None and made.item_count == 1
    assert DatasetItem.objects.get(dataset=made).sample_id  # the sample itself is gone


@pytest.mark.django_db(transaction=True)
def test_two_makers_of_one_name_at_once_get_consecutive_versions() -> None:
    # The second's insert of version 1 waits on the first's uncommitted row; when the first
    # commits, the unique (name, version) refuses it and it takes version 2.
    def make() -> None:
        services.dataset_create(name="race", items=[item()], created_by="k")

    raised = first_holds_the_lock(make, make)
    assert raised == {}
    assert sorted(Dataset.objects.values_list("version", flat=True)) == [1, 2]
    assert DatasetItem.objects.count() == 2


def test_the_tag_summary_counts_the_most_common_tags_only() -> None:
    items = [item(tags=["common", f"own-{i}"]) for i in range(150)]
    made = services.dataset_create(name="tags", items=items, created_by="k")
    assert len(made.tag_counts) == services.MAX_TAG_COUNTS
    assert next(iter(made.tag_counts.items())) == ("common", 150)


def test_a_set_a_replay_run_refers_to_is_neither_deleted_nor_purged() -> None:
    # The replay's run protects its dataset (on_delete=PROTECT): the same 409, and retention
    # keeps the set until the run goes (with its plan).
    plan = shadow_plan(shadow_retention_days=1)
    store_samples(plan, 2)
    made = services.dataset_from_shadow(plan=plan, name="measured", created_by="a")
    ReplayRun.objects.create(plan=plan, dataset=made, created_at=timezone.now())
    with pytest.raises(DomainError) as refused:
        services.dataset_delete(dataset=made)
    assert (refused.value.status, refused.value.code) == (409, "dataset_in_use")
    later = timezone.now() + timedelta(days=2)
    assert dataset_purge(now=later) == 0
    assert DatasetItem.objects.filter(dataset=made).count() == 2
    MigrationPlan.objects.filter(pk=plan.pk).delete()
    assert dataset_purge(now=later) == 1
    assert not Dataset.objects.exists()
