"""Reads of replay datasets: one version (the latest by default), its items in order, the
sets a key may list, and which sets a replay still uses."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from django.db.models import Q, QuerySet

from migrations_app.errors import NotFound
from migrations_app.models import Dataset, DatasetItem

#: A check that answers, of some dataset ids, those a replay still uses.
InUseCheck = Callable[[list[int]], set[int]]
_in_use_checks: list[InUseCheck] = []


def register_in_use(check: InUseCheck) -> InUseCheck:
    """Add a check to :func:`in_use_ids` (the replay registers its runs'); usable as a
    decorator. Registering the same function twice keeps one."""
    if check not in _in_use_checks:
        _in_use_checks.append(check)
    return check


def in_use_ids(ids: Collection[int]) -> set[int]:
    """The datasets among ``ids`` that a replay still uses: deletion refuses them (409
    ``dataset_in_use``) and retention keeps them until it no longer does."""
    ids = list(ids)
    used: set[int] = set()
    for check in _in_use_checks:
        used |= check(ids)
    return used


def not_found(name: str, version: int | None = None) -> NotFound:
    what = f"{name!r} version {version}" if version is not None else repr(name)
    return NotFound(
        f"No dataset {what}.",
        code="dataset_not_found",
        details={"field": "version" if version is not None else "name"},
    )


def visible(plan_ids: Collection[int] | None) -> QuerySet[Dataset]:
    """The sets a key limited to ``plan_ids`` may see (None: every set). A limited key sees
    only sets made for its plans: a set of another plan's shadow samples holds its prompts."""
    sets = Dataset.objects.select_related("plan")
    if plan_ids is not None:
        sets = sets.filter(plan_id__in=list(plan_ids))
    return sets


def usable_by(plan_id: int) -> Q:
    """The sets a plan's replay may use: those made for it or for no plan. A set made for
    another plan holds that plan's prompts (its shadow samples): another plan's replay would
    send them to its own candidate and show them on its own page."""
    return Q(plan_id=plan_id) | Q(plan__isnull=True)


def get(
    name: str,
    version: int | None = None,
    *,
    plan_ids: Collection[int] | None = None,
    for_plan: int | None = None,
) -> Dataset:
    """Version ``version`` of the named set, the latest when None; 404 ``dataset_not_found``.
    ``for_plan``: only what that plan's replay may use (:func:`usable_by`)."""
    sets = visible(plan_ids).filter(name=name)
    if for_plan is not None:
        sets = sets.filter(usable_by(for_plan))
    found = (
        sets.order_by("-version").first()
        if version is None
        else sets.filter(version=version).first()
    )
    if found is None:
        raise not_found(name, version)
    return found


def listing(
    *, plan_ids: Collection[int] | None = None, name: str | None = None
) -> QuerySet[Dataset]:
    """Every version of every set a key sees, by name then newest first."""
    sets = visible(plan_ids)
    if name is not None:
        sets = sets.filter(name=name)
    return sets.order_by("name", "-version")


def items(dataset: Dataset) -> QuerySet[DatasetItem]:
    """The set's items in order (index 0..n-1)."""
    return DatasetItem.objects.filter(dataset=dataset).order_by("index")


def item_page(dataset: Dataset, *, offset: int, limit: int) -> list[DatasetItem]:
    """Items ``offset`` .. ``offset + limit - 1`` (by index: served by the unique index)."""
    return list(items(dataset).filter(index__gte=offset, index__lt=offset + limit))


def summary(dataset: Dataset) -> dict[str, Any]:
    """A set as the API and the replay show it (no items)."""
    return {
        "name": dataset.name,
        "version": dataset.version,
        "description": dataset.description,
        "source": dataset.source,
        "plan": dataset.plan.key if dataset.plan_id and dataset.plan else None,
        "created_at": dataset.created_at,
        "created_by": dataset.created_by,
        "item_count": dataset.item_count,
        "digest": dataset.digest,
        "filter": dataset.filter,
        "tag_counts": dataset.tag_counts,
        "expires_at": dataset.expires_at,
    }


def item_body(item: DatasetItem) -> dict[str, Any]:
    return {
        "index": item.index,
        "request": item.request,
        "reference": item.reference,
        "control_answer": item.control_answer,
        "tags": item.tags,
        "sample_id": item.sample_id,
    }
