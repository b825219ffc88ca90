"""Writes of replay datasets: make a set (from items, an uploaded JSONL file, or a plan's
shadow samples), pin it against retention, delete it.

A set is made whole or not at all: every item is checked first (``validation``), and the set
and its items are written in one transaction. The version is the name's next; two makers of
the same name at once both succeed, one a version later (the unique (name, version) pair
decides, and the loser takes the next number).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import IntegrityError, transaction
from django.db.models import Max, ProtectedError, RestrictedError
from django.utils import timezone

from migrations_app.datasets import jsonl, selectors, validation
from migrations_app.datasets.validation import MAX_DESCRIPTION_CHARS, MAX_ITEMS, MAX_TAGS
from migrations_app.errors import DomainError, ValidationFailed
from migrations_app.models import (
    Dataset,
    DatasetItem,
    DatasetSource,
    MigrationPlan,
    Outcome,
    ShadowSample,
)
from migrations_app.outcomes.event_checks import Invalid
from migrations_app.plans.json_checks import unstorable

_VERSION_ATTEMPTS = 5
#: Tags a set's summary counts (the most common): every item may carry tags of its own.
MAX_TAG_COUNTS = 100
_BATCH = 1000
#: Shadow samples a set is drawn from at most (the newest in the filter's range): the draw
#: reads their ids into memory.
MAX_POOL = 200_000


def _candidate_kind(plan: MigrationPlan | None) -> tuple[str | None, dict[str, Any]]:
    if plan is None:
        return None, {}
    return plan.candidate_model.provider.kind, dict(plan.candidate_params or {})


def digest_of(items: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of the items' canonical JSON (keys sorted): equal content, equal digest."""
    sha = hashlib.sha256()
    for item in items:
        sha.update(orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
        sha.update(b"\n")
    return sha.hexdigest()


def _checked_header(name: Any, description: Any) -> None:
    fields: dict[str, list[str]] = {}
    if problem := validation.name_problem(name):
        fields["name"] = [problem]
    if (
        not isinstance(description, str)
        or len(description) > MAX_DESCRIPTION_CHARS
        or unstorable(description)
    ):
        fields["description"] = [f"A string of at most {MAX_DESCRIPTION_CHARS} characters."]
    if fields:
        raise ValidationFailed("The dataset is not valid.", details={"fields": fields})


def _check_name_visible(name: str, plan_ids: Collection[int]) -> None:
    """A key limited to some plans adds versions only to a name whose every version it sees:
    a plan's replay takes its set's latest version, so another plan's key must not be able
    to slip its own items in as that version."""
    if Dataset.objects.filter(name=name).exclude(plan_id__in=list(plan_ids)).exists():
        raise DomainError(
            f"The name {name!r} is taken by datasets of plans this API key does not see: "
            "choose another name.",
            code="dataset_name_taken",
            status=409,
            details={"field": "name"},
        )


def _store(
    *,
    name: str,
    items: list[dict[str, Any]],
    source: str,
    created_by: str,
    description: str,
    plan: MigrationPlan | None,
    filter: Mapping[str, Any] | None = None,
    expires_at: datetime | None = None,
    sample_ids: Sequence[str | None] | None = None,
    plan_ids: Collection[int] | None = None,
) -> Dataset:
    if not items:
        raise validation.empty()
    if len(items) > MAX_ITEMS:
        raise validation.too_many(len(items))
    tag_counts = Counter(tag for item in items for tag in item["tags"])
    digest = digest_of(items)
    for attempt in range(_VERSION_ATTEMPTS):
        try:
            with transaction.atomic():
                if plan_ids is not None:
                    _check_name_visible(name, plan_ids)
                latest = Dataset.objects.filter(name=name).aggregate(v=Max("version"))["v"]
                dataset = Dataset.objects.create(
                    name=name,
                    version=(latest or 0) + 1,
                    description=description,
                    plan=plan,
                    source=source,
                    created_at=timezone.now(),
                    created_by=created_by[:200],
                    item_count=len(items),
                    digest=digest,
                    filter=dict(filter or {}),
                    tag_counts=dict(tag_counts.most_common(MAX_TAG_COUNTS)),
                    expires_at=expires_at,
                )
                DatasetItem.objects.bulk_create(
                    (
                        DatasetItem(
                            dataset=dataset,
                            index=i,
                            sample_id=sample_ids[i] if sample_ids else None,
                            **item,
                        )
                        for i, item in enumerate(items)
                    ),
                    batch_size=_BATCH,
                )
                return dataset
        except IntegrityError:
            # Another maker took this version between the read and the insert.
            if attempt == _VERSION_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def dataset_create(
    *,
    name: str,
    items: Sequence[Any],
    created_by: str,
    source: str = DatasetSource.API,
    description: str = "",
    plan: MigrationPlan | None = None,
    plan_ids: Collection[int] | None = None,
) -> Dataset:
    """Make the next version of ``name`` from raw items (each checked; a problem in any
    refuses the whole set, 400 naming each as ``items[i]``). With ``plan``, params are checked
    for its candidate's provider. Past :data:`MAX_ITEMS`: 413 ``batch_too_large``. With
    ``plan_ids`` (a key limited to those plans): 409 ``dataset_name_taken`` when the name has
    versions of other plans (or of none)."""
    _checked_header(name, description)
    if not isinstance(items, list):
        raise ValidationFailed(
            "items is a list of dataset items.", details={"fields": {"items": ["A list."]}}
        )
    if len(items) > MAX_ITEMS:
        raise validation.too_many(len(items))
    kind, arm_params = _candidate_kind(plan)
    checked, problems = validation.checked_items(
        ((f"items[{i}]", raw) for i, raw in enumerate(items)), kind=kind, arm_params=arm_params
    )
    if problems:
        raise validation.refused(problems)
    return _store(
        name=name,
        items=checked,
        source=source,
        created_by=created_by,
        description=description,
        plan=plan,
        plan_ids=plan_ids,
    )


def dataset_upload(
    *,
    name: str,
    data: bytes,
    created_by: str,
    description: str = "",
    plan: MigrationPlan | None = None,
) -> Dataset:
    """Make the next version of ``name`` from a JSONL file (one item per line). Every bad
    line is named by its number and nothing is stored from a file with any; 413 past the
    file's size cap or :data:`MAX_ITEMS` lines."""
    _checked_header(name, description)
    rows, problems = jsonl.read_lines(data)
    kind, arm_params = _candidate_kind(plan)
    checked, problems = validation.checked_items(
        rows, kind=kind, arm_params=arm_params, problems=problems
    )
    if problems:
        problems.sort(key=lambda p: int(p.where.split()[-1]))
        raise validation.refused(problems)
    return _store(
        name=name,
        items=checked,
        source=DatasetSource.UPLOAD,
        created_by=created_by,
        description=description,
        plan=plan,
    )


def dataset_pin(*, dataset: Dataset) -> bool:
    """Keep the set past retention (its expiry cleared). True when it had one."""
    return bool(
        Dataset.objects.filter(pk=dataset.pk, expires_at__isnull=False).update(expires_at=None)
    )


def in_use(dataset: Dataset) -> DomainError:
    return DomainError(
        f"Dataset {dataset} is used by a replay; delete it when the replay no longer needs it.",
        code="dataset_in_use",
        status=409,
        details={"field": "dataset"},
    )


def dataset_delete(*, dataset: Dataset) -> None:
    """Delete the set and its items; 409 ``dataset_in_use`` while a replay uses it (the row
    is locked, so a replay that locks it to start cannot begin in between)."""
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if locked is None:
            raise selectors.not_found(dataset.name, dataset.version)
        if selectors.in_use_ids([locked.pk]):
            raise in_use(locked)
        try:
            with transaction.atomic():
                locked.delete()
        except (ProtectedError, RestrictedError):
            raise in_use(locked) from None


def _sample_tags(plan: MigrationPlan, decision_ids: list[str]) -> dict[str, list[str]]:
    """Each decision's tags: its outcome's segment values as ``dimension=value`` (the plan's
    segment dimensions), the ones a tag may be. Samples carry no attributes of their own."""
    tags: dict[str, list[str]] = {}
    for start in range(0, len(decision_ids), _BATCH):
        chunk = decision_ids[start : start + _BATCH]
        rows = Outcome.objects.filter(
            plan=plan, decision_id__in=chunk, segments__isnull=False
        ).values_list("decision_id", "segments")
        for decision_id, segments in rows:
            if decision_id in tags or not isinstance(segments, Mapping):
                continue
            found = []
            for dimension, value in sorted(segments.items()):
                tag = f"{dimension}={value}"
                if validation.tag_problem(tag) is None:
                    found.append(tag)
            tags[decision_id] = found[:MAX_TAGS]
    return tags


def _no_samples(plan: MigrationPlan, what: str, field: str) -> ValidationFailed:
    return ValidationFailed(
        f"Plan {plan.key!r} has no stored shadow samples{what}. Run a shadow phase (or send "
        "samples) first, widen the filter, or upload a dataset instead.",
        details={"fields": {field: [f"No shadow samples{what}."]}},
    )


def dataset_from_shadow(
    *,
    plan: MigrationPlan,
    name: str,
    created_by: str,
    since: datetime | None = None,
    until: datetime | None = None,
    tags: Sequence[str] = (),
    size: int | None = None,
    seed: int = 0,
    description: str = "",
    plan_ids: Collection[int] | None = None,
) -> Dataset:
    """Make the next version of ``name`` from the plan's stored shadow samples (redacted as
    stored): those created in ``[since, until)`` whose request carries every one of ``tags``,
    ``size`` of them drawn at random with ``seed`` (all when None), in the order they came.
    Control's answer is each item's ``control_answer`` (null when control failed). The set
    expires with the plan's shadow retention counted from now (pin it to keep it).

    400 naming the field when the plan has no samples, none match the filter, or more than
    :data:`MAX_ITEMS` match and no ``size`` is given."""
    _checked_header(name, description)
    if size is not None and not (isinstance(size, int) and 1 <= size <= MAX_ITEMS):
        raise ValidationFailed(
            f"size is 1 to {MAX_ITEMS}.", details={"fields": {"size": [f"1 to {MAX_ITEMS}."]}}
        )
    for i, tag in enumerate(tags):
        if problem := validation.tag_problem(tag):
            raise ValidationFailed(problem, details={"fields": {f"tags[{i}]": [problem]}})
    samples = ShadowSample.objects.filter(plan=plan)
    if not samples.exists():
        raise _no_samples(plan, "", "plan")
    if since is not None:
        samples = samples.filter(created_at__gte=since)
    if until is not None:
        samples = samples.filter(created_at__lt=until)
    pool = list(
        samples.order_by("-created_at", "-sample_id").values_list("sample_id", "decision_id")[
            :MAX_POOL
        ]
    )
    if not pool:
        raise _no_samples(plan, " in that time range", "since")
    if tags:
        sample_tags = _sample_tags(plan, [d for _, d in pool])
        wanted = set(tags)
        pool = [(s, d) for s, d in pool if wanted <= set(sample_tags.get(d, ()))]
        if not pool:
            raise _no_samples(plan, f" tagged {sorted(wanted)}", "tags")
    if size is None and len(pool) > MAX_ITEMS:
        raise ValidationFailed(
            f"{len(pool)} samples match; a dataset holds at most {MAX_ITEMS}: give a size.",
            details={"fields": {"size": [f"Required when more than {MAX_ITEMS} samples match."]}},
        )
    chosen = pool if size is None or size >= len(pool) else random.Random(seed).sample(pool, size)
    if not tags:  # the items' own tags only: not the whole pool's (up to MAX_POOL outcomes)
        sample_tags = _sample_tags(plan, [d for _, d in chosen])
    chosen_ids = {s for s, _ in chosen}
    rows = []
    for start in range(0, len(pool), _BATCH):
        ids = [s for s, _ in pool[start : start + _BATCH] if s in chosen_ids]
        rows.extend(
            ShadowSample.objects.filter(pk__in=ids).values_list(
                "sample_id", "decision_id", "created_at", "request", "control"
            )
        )
    rows.sort(key=lambda r: (r[2], r[0]))
    kind, arm_params = _candidate_kind(plan)
    items, sample_ids, skipped = [], [], 0
    for sample_id, decision_id, _, request, control in rows:
        control = control if isinstance(control, Mapping) else {}
        raw = {
            "request": {k: v for k, v in request.items() if k in validation.REQUEST_KEYS},
            "control_answer": None if control.get("error") else control.get("text"),
            "tags": sample_tags.get(decision_id, []),
        }
        try:
            # Samples stored before a rule (the params allowlist) may break it: left out.
            items.append(validation.checked_item(raw, kind=kind, arm_params=arm_params))
        except Invalid:
            skipped += 1
            continue
        sample_ids.append(sample_id)
    if not items:
        raise _no_samples(plan, " that can be replayed", "plan")
    return _store(
        name=name,
        items=items,
        source=DatasetSource.SHADOW,
        created_by=created_by,
        description=description,
        plan=plan,
        filter={
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "tags": list(tags),
            "size": size,
            "seed": seed,
            "matched": len(pool),
            "skipped": skipped,
        },
        expires_at=timezone.now() + timedelta(days=plan.shadow_retention_days),
        sample_ids=sample_ids,
        plan_ids=plan_ids,
    )
