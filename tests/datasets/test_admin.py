"""Datasets in the admin: a JSONL upload (each bad line named, nothing stored), a draw from a
plan's shadow samples, the read-only page, pin and delete through the services."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from migrations_app.datasets import selectors
from migrations_app.datasets.validation import MAX_FILE_BYTES
from migrations_app.models import Dataset, DatasetItem
from tests.datasets.conftest import item, shadow_plan, store_samples

pytestmark = pytest.mark.django_db

ADD = reverse("admin:migrations_app_dataset_add")
LIST = reverse("admin:migrations_app_dataset_changelist")


def _file(*rows: Any, raw: bytes | None = None) -> SimpleUploadedFile:
    data = raw if raw is not None else b"\n".join(orjson.dumps(r) for r in rows)
    return SimpleUploadedFile("set.jsonl", data, content_type="application/jsonl")


def _add(client: Client, **fields: Any) -> Any:
    data = {"name": "faq", "description": "", "made_from": "upload", "seed": "0", **fields}
    return client.post(ADD, data)


def test_upload_a_jsonl_file(admin_client: Client) -> None:
    response = _add(admin_client, file=_file(item("a"), item("b", tags=["x"])))
    assert response.status_code == 302, response.content.decode()[-3000:]
    made = Dataset.objects.get()
    assert (made.name, made.version, made.item_count, made.source) == ("faq", 1, 2, "upload")
    assert made.created_by == "admin"  # the person who uploaded it
    again = _add(admin_client, file=_file(item("c")))
    assert again.status_code == 302
    assert list(Dataset.objects.order_by("version").values_list("version", flat=True)) == [1, 2]
    page = admin_client.get(reverse("admin:migrations_app_dataset_change", args=[made.pk]))
    body = page.content.decode()
    assert page.status_code == 200 and "faq" in body and "<td>b</td>" in body
    assert 'name="_save"' not in body  # immutable: nothing to save


def test_a_file_with_bad_lines_names_each_and_stores_nothing(admin_client: Client) -> None:
    bad = _file(raw=b'{"request": {"messages": [{"role": "user", "content": "ok"}]}}\n{oops\n'
                b'{"request": {"messages": [{"role": "user", "content": "x"}], "params": {"api_key": "k"}}}')  # fmt: skip
    response = _add(admin_client, file=bad)
    assert response.status_code == 200
    body = response.content.decode()
    assert "line 2: line: Not valid JSON" in body
    assert "line 3: request.params.api_key" in body
    assert "Nothing was stored" in body
    assert not Dataset.objects.exists() and not DatasetItem.objects.exists()


def test_an_oversized_file_and_a_missing_file_are_refused(admin_client: Client) -> None:
    response = _add(admin_client, file=_file(raw=b" " * (MAX_FILE_BYTES + 1)))
    assert response.status_code == 200 and "at most 10485760" in response.content.decode()
    assert "Choose a JSONL file." in _add(admin_client).content.decode()
    assert (
        "Lowercase letters"
        in _add(admin_client, name="Bad Name", file=_file(item())).content.decode()
    )
    assert not Dataset.objects.exists()


def test_draw_from_shadow_samples_and_a_plan_without_any(admin_client: Client) -> None:
    empty = shadow_plan("empty")
    refused = _add(admin_client, made_from="shadow", plan=str(empty.pk))
    assert refused.status_code == 200
    assert "has no stored shadow samples" in refused.content.decode()
    assert "Choose the plan" in _add(admin_client, made_from="shadow").content.decode()
    plan = shadow_plan("busy")
    store_samples(plan, 5)
    made = _add(admin_client, made_from="shadow", plan=str(plan.pk), size="3", seed="4")
    assert made.status_code == 302, made.content.decode()[-3000:]
    dataset = Dataset.objects.get()
    assert (dataset.source, dataset.item_count, dataset.plan_id) == ("shadow", 3, plan.pk)
    assert dataset.filter["seed"] == 4 and dataset.expires_at is not None


def test_pin_and_delete_through_the_services(admin_client: Client) -> None:
    plan = shadow_plan()
    store_samples(plan, 2)
    assert _add(admin_client, made_from="shadow", plan=str(plan.pk)).status_code == 302
    dataset = Dataset.objects.get()
    admin_client.post(LIST, {"action": "pin", "_selected_action": [dataset.pk]})
    dataset.refresh_from_db()
    assert dataset.expires_at is None

    def check(ids: list[int]) -> set[int]:
        return {dataset.pk} & set(ids)

    selectors.register_in_use(check)
    try:
        response = admin_client.post(
            LIST, {"action": "delete_selected_sets", "_selected_action": [dataset.pk]}, follow=True
        )
    finally:
        selectors._in_use_checks.remove(check)
    assert "used by a replay" in response.content.decode()
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    admin_client.post(LIST, {"action": "delete_selected_sets", "_selected_action": [dataset.pk]})
    assert not Dataset.objects.exists() and not DatasetItem.objects.exists()
