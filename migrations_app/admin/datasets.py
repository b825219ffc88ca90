"""Replay datasets in the admin: made by uploading a JSONL file or by drawing from a plan's
shadow samples, then only read (a set is immutable), pinned against retention, or deleted
(refused while a replay uses it)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from migrations_app.datasets import selectors, services
from migrations_app.datasets.validation import (
    MAX_FILE_BYTES,
    MAX_ITEMS,
    MAX_TAG_CHARS,
    MAX_TAGS,
)
from migrations_app.errors import DomainError
from migrations_app.models import Dataset, MigrationPlan

#: Items shown on a set's page (the API pages through the rest).
SHOWN_ITEMS = 50
UPLOAD, SHADOW = "upload", "shadow"


class DatasetAddForm(forms.ModelForm):
    """A new version of a set: from a JSONL file, or from a plan's shadow samples. The set is
    made in ``clean`` (the services check every item, and their problems become this form's
    errors: each bad line by its number), so nothing is stored from a form with an error."""

    made_from = forms.ChoiceField(
        choices=[(UPLOAD, "An uploaded JSONL file"), (SHADOW, "The plan's shadow samples")],
        initial=UPLOAD,
        widget=forms.RadioSelect,
    )
    file = forms.FileField(
        required=False,
        help_text=f'One item per line: {{"request": {{"messages": [...], "params": {{}}}}, '
        f'"reference": "...", "control_answer": "...", "tags": [...]}}. At most '
        f"{MAX_FILE_BYTES // (1024 * 1024)} MiB and {MAX_ITEMS} items.",
    )
    since = forms.DateTimeField(required=False, help_text="Shadow: samples from (UTC).")
    until = forms.DateTimeField(required=False, help_text="Shadow: samples before (UTC).")
    tags = forms.CharField(
        required=False,
        help_text=f"Shadow: comma-separated segment tags (dimension=value), all required; "
        f"at most {MAX_TAGS} of {MAX_TAG_CHARS} characters.",
    )
    size = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_ITEMS,
        help_text="Shadow: samples drawn at random (all when empty).",
    )
    seed = forms.IntegerField(required=False, min_value=0, max_value=2**31 - 1, initial=0)

    class Meta:
        model = Dataset
        fields = ("name", "description", "plan")

    def __init__(self, *args: Any, user: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.created: Dataset | None = None
        self.fields["plan"].help_text = (
            "Shadow: the plan whose samples to draw. Upload: optional, its candidate's "
            "provider then rules the params."
        )

    def validate_unique(self) -> None:
        pass  # the version is the name's next: (name, version) never collides here

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        try:
            self.created = self._make(data)
        except DomainError as error:
            self._show(error)
        return data

    def _make(self, data: dict[str, Any]) -> Dataset | None:
        common = {
            "name": data["name"],
            "description": data.get("description") or "",
            "created_by": self.user,
        }
        plan: MigrationPlan | None = data.get("plan")
        if data["made_from"] == SHADOW:
            if plan is None:
                self.add_error("plan", "Choose the plan whose shadow samples to draw.")
                return None
            raw_tags = [t.strip() for t in (data.get("tags") or "").split(",") if t.strip()]
            if len(raw_tags) > MAX_TAGS:
                self.add_error("tags", f"At most {MAX_TAGS} tags.")
                return None
            return services.dataset_from_shadow(
                plan=plan,
                since=data.get("since"),
                until=data.get("until"),
                tags=raw_tags,
                size=data.get("size"),
                seed=data.get("seed") or 0,
                **common,
            )
        upload = data.get("file")
        if upload is None:
            self.add_error("file", "Choose a JSONL file.")
            return None
        if upload.size > MAX_FILE_BYTES:
            self.add_error(
                "file",
                f"The file is {upload.size} bytes; at most {MAX_FILE_BYTES} "
                f"({MAX_FILE_BYTES // (1024 * 1024)} MiB).",
            )
            return None
        return services.dataset_upload(data=upload.read(), plan=plan, **common)

    def _show(self, error: DomainError) -> None:
        """The services' refusal as form errors: each problem (line and field) on the field
        it came from, the rest on the form."""
        problems = error.details.get("problems")
        fields = error.details.get("fields") or {}
        target = "file" if self.cleaned_data.get("made_from") == UPLOAD else None
        if problems:
            for p in problems:
                self.add_error(target, f"{p['where']}: {p['field']}: {p['message']}")
            count = error.details.get("problem_count", len(problems))
            if count > len(problems):
                self.add_error(target, f"... {count - len(problems)} more problems.")
            self.add_error(None, "Nothing was stored: fix the file and upload it again.")
            return
        for field, words in fields.items():
            name = field.split("[")[0]
            if name in self.fields:
                self.add_error(name, " ".join(words))
        # The whole message says what to fix (run a shadow phase first, widen the filter...).
        self.add_error(target if error.status == 413 else None, error.message)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "version",
        "source",
        "plan",
        "item_count",
        "created_at",
        "created_by",
        "expires_at",
    )
    list_filter = ("source",)
    search_fields = ("name",)
    ordering = ("name", "-version")
    actions = ["pin", "delete_selected_sets"]
    readonly_fields = (
        "name",
        "version",
        "description",
        "plan",
        "source",
        "created_at",
        "created_by",
        "item_count",
        "digest",
        "filter",
        "tag_counts",
        "expires_at",
        "items_shown",
    )

    def get_form(
        self, request: HttpRequest, obj: Dataset | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is not None:
            return super().get_form(request, obj, change=change, **kwargs)
        kwargs["form"] = DatasetAddForm
        form = super().get_form(request, obj, change=change, **kwargs)
        user = request.user.get_username()

        class WithUser(form):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, user=user, **kw)

        return WithUser

    def get_fields(self, request: HttpRequest, obj: Dataset | None = None) -> Any:
        if obj is None:
            return (
                "name",
                "description",
                "made_from",
                "plan",
                "file",
                "since",
                "until",
                "tags",
                "size",
                "seed",
            )
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Dataset | None = None) -> Any:
        return self.readonly_fields if obj is not None else ()

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deletion goes through the service (in use: refused)
        return actions

    def has_change_permission(self, request: HttpRequest, obj: Dataset | None = None) -> bool:
        return False  # immutable: a change is a new version

    def save_model(self, request: HttpRequest, obj: Dataset, form: Any, change: bool) -> None:
        created = form.created
        assert created is not None  # the form is valid only when clean() made the set
        obj.pk, obj.name, obj.version = created.pk, created.name, created.version
        form.instance = created

    def delete_model(self, request: HttpRequest, obj: Dataset) -> None:
        try:
            services.dataset_delete(dataset=obj)
        except DomainError as error:
            messages.error(request, error.message)

    @admin.display(description=f"items (the first {SHOWN_ITEMS})")
    def items_shown(self, obj: Dataset) -> str:
        rows = selectors.item_page(obj, offset=0, limit=SHOWN_ITEMS)
        return format_html(
            "<table><tr><th>#</th><th>last message</th><th>reference</th><th>control</th>"
            "<th>tags</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        i.index,
                        (i.request.get("messages") or [{}])[-1].get("content", "")[:300],
                        (i.reference or "")[:200],
                        (i.control_answer or "")[:200],
                        ", ".join(i.tags),
                    )
                    for i in rows
                ),
            ),
        )

    def has_pin_permission(self, request: HttpRequest) -> bool:
        # Pinning keeps prompts longer than the plan's retention: who may delete a set may.
        return self.has_delete_permission(request)

    @admin.action(description="Keep past retention (pin)", permissions=["pin"])
    def pin(self, request: HttpRequest, queryset: QuerySet[Dataset]) -> None:
        pinned = sum(services.dataset_pin(dataset=d) for d in queryset)
        messages.success(request, f"Pinned {pinned} dataset(s): retention no longer deletes them.")

    @admin.action(description="Delete selected datasets", permissions=["delete"])
    def delete_selected_sets(self, request: HttpRequest, queryset: QuerySet[Dataset]) -> None:
        deleted = 0
        for dataset in queryset:
            try:
                services.dataset_delete(dataset=dataset)
                deleted += 1
            except DomainError as error:
                messages.error(request, error.message)
        messages.success(request, f"Deleted {deleted} dataset(s).")
