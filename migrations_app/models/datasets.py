"""Replay datasets: immutable, versioned lists of requests (with, optionally, a reference
answer, control's recorded answer and tags) that a replay phase runs through the candidate."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

from migrations_app.models.plans import MigrationPlan

#: A dataset's name: the same shape as a plan key (it appears in URLs and the CLI).
DATASET_NAME = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,62}$",
    "Lowercase letters, digits, '.', '_' and '-', starting with a letter or digit (at most 63).",
)


class DatasetSource(models.TextChoices):
    SHADOW = "shadow", "From shadow samples"
    UPLOAD = "upload", "Uploaded (JSONL)"
    API = "api", "Through the API"


class Dataset(models.Model):
    """One version of a named dataset. Never edited after it is made (its items neither):
    a new upload under an existing name is the next version. ``digest`` is the SHA-256 of
    the items' canonical JSON, so two versions with the same content are recognisable.

    ``expires_at``: when retention deletes it (a set made from shadow samples holds the same
    prompts and answers, so it takes the plan's shadow retention, counted from its making);
    null for uploaded sets and for a set an operator pinned."""

    name = models.CharField(max_length=63, validators=[DATASET_NAME])
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True, max_length=2000)
    # The plan whose shadow samples it was made from; null for uploads, and once that plan
    # is deleted (the set itself stays: it holds copies).
    plan = models.ForeignKey(
        MigrationPlan, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=8, choices=DatasetSource.choices)
    created_at = models.DateTimeField()
    # A username, or "api key <name>".
    created_by = models.CharField(max_length=200)
    item_count = models.PositiveIntegerField()
    digest = models.CharField(max_length=64)
    # The filter a shadow-made set was drawn with (time range, tags, size, seed); {} otherwise.
    filter = models.JSONField(default=dict, blank=True)
    # {tag: number of items carrying it}.
    tag_counts = models.JSONField(default=dict, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="dataset_name_version")
        ]
        indexes = [
            # Retention: the sets past their expiry.
            models.Index(fields=["expires_at"], name="dataset_expires_idx"),
        ]
        # (name, version) is served by the unique constraint's index: a name's latest version.

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class DatasetItem(models.Model):
    """One request of a dataset, at ``index`` (0..n-1).

    ``request`` is ``{"messages": [{role, content}], "params": {...}, "json_schema": {...} |
    null}``, params limited to what a shadow sample may set (turnout.providers.params).
    ``reference``: the expected answer, when the set has one; ``control_answer``: control's
    recorded answer (a shadow sample's production answer, or given with the item)."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField()
    request = models.JSONField()
    # Null is "none given", apart from "" (an answer that was empty): the replay scores
    # against a reference or a recorded answer only when there is one.
    reference = models.TextField(null=True, blank=True)  # noqa: DJ001
    control_answer = models.TextField(null=True, blank=True)  # noqa: DJ001
    tags = models.JSONField(default=list, blank=True)
    # The shadow sample it was copied from: not a foreign key, the sample's retention may
    # delete it first.
    sample_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001

    class Meta:
        constraints = [
            # Also the index of a set's items in order (paging, replay).
            models.UniqueConstraint(fields=["dataset", "index"], name="datasetitem_index")
        ]

    def __str__(self) -> str:
        return f"{self.dataset_id}[{self.index}]"
