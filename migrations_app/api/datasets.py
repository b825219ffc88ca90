"""The datasets API: replay datasets as code.

- ``GET /api/v1/datasets``: every version of every set this key sees (``?name=`` one name's),
  newest first by name, paged as the items are.
- ``POST /api/v1/datasets``: make the next version of a set, from ``items`` or, with
  ``shadow`` (a filter: since, until, tags, size, seed), from a plan's stored shadow samples.
  Gzip bodies are taken (``Content-Encoding: gzip``). Every item is checked; one bad item
  refuses the set (400 naming each as ``items[i]`` and its field), more than 10,000 is a 413.
- ``GET /api/v1/datasets/{name}`` (the latest version) and ``/{name}/{version}``: the set and
  a page of its items (``?offset=&limit=``, at most 1,000 a page; ``next_offset`` is null on
  the last).
- ``DELETE /api/v1/datasets/{name}/{version}``: refused (409 ``dataset_in_use``) while a
  replay uses it.

Reads take the ``plans`` or the ``admin`` scope, writes the ``plans`` scope (as plans as
code). A key limited to some plans sees, makes and deletes only sets made for those plans (a
set of shadow samples holds that plan's prompts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from migrations_app.api.auth import ApiKeyAuthentication, KeyIdentity
from migrations_app.api.errors import error_paths
from migrations_app.api.ingest import read_json_body
from migrations_app.api.plans import READ, WRITE
from migrations_app.datasets import selectors, services, validation
from migrations_app.datasets.validation import (
    MAX_DESCRIPTION_CHARS,
    MAX_ITEMS,
    MAX_TAG_CHARS,
    MAX_TAGS,
)
from migrations_app.errors import DomainError, NotFound, ValidationFailed
from migrations_app.models import Dataset, DatasetSource, MigrationPlan
from migrations_app.plans.json_checks import whole_number

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_VERSION = 2**31 - 1


class ShadowFilterIn(serializers.Serializer):
    since = serializers.DateTimeField(required=False, allow_null=True, default=None)
    until = serializers.DateTimeField(required=False, allow_null=True, default=None)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=MAX_TAG_CHARS, trim_whitespace=False),
        max_length=MAX_TAGS,
        required=False,
        default=list,
        help_text="Only samples whose request's segments (dimension=value) include every one.",
    )
    size = serializers.IntegerField(
        min_value=1,
        max_value=MAX_ITEMS,
        required=False,
        allow_null=True,
        default=None,
        help_text="Drawn at random with seed; every matching sample when absent.",
    )
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False, default=0)


class DatasetHeaderIn(serializers.Serializer):
    name = serializers.CharField(max_length=63, trim_whitespace=False)
    description = serializers.CharField(
        max_length=MAX_DESCRIPTION_CHARS, allow_blank=True, required=False, default=""
    )
    plan = serializers.CharField(
        max_length=63,
        required=False,
        allow_null=True,
        default=None,
        help_text="The plan the set is for: its candidate's params rule; required with shadow.",
    )
    shadow = ShadowFilterIn(required=False, allow_null=True, default=None)


class MessageDoc(serializers.Serializer):
    role = serializers.ChoiceField(["system", "user", "assistant"])
    content = serializers.CharField(max_length=100_000)


class RequestDoc(serializers.Serializer):
    messages = MessageDoc(many=True)
    params = serializers.DictField(
        required=False,
        help_text="What a shadow sample may set (turnout.providers.params): temperature, "
        "top_p, top_k, stop, seed, penalties, max_tokens.",
    )
    json_schema = serializers.DictField(required=False, allow_null=True)


class ItemDoc(serializers.Serializer):
    request = RequestDoc()
    reference = serializers.CharField(required=False, allow_null=True)
    control_answer = serializers.CharField(required=False, allow_null=True)
    tags = serializers.ListField(
        child=serializers.CharField(max_length=MAX_TAG_CHARS), max_length=MAX_TAGS, required=False
    )


class DatasetIn(DatasetHeaderIn):
    items = ItemDoc(many=True, required=False, help_text=f"1 to {MAX_ITEMS}; or give shadow.")


class DatasetOut(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    description = serializers.CharField(allow_blank=True)
    source = serializers.ChoiceField(DatasetSource.values)
    plan = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField()
    item_count = serializers.IntegerField()
    digest = serializers.CharField(help_text="SHA-256 of the items' canonical JSON.")
    filter = serializers.DictField()
    tag_counts = serializers.DictField()
    expires_at = serializers.DateTimeField(allow_null=True)


class ItemOut(ItemDoc):
    index = serializers.IntegerField()
    sample_id = serializers.CharField(allow_null=True)


class DatasetDetail(DatasetOut):
    items = ItemOut(many=True)
    next_offset = serializers.IntegerField(allow_null=True)


class DatasetList(serializers.Serializer):
    datasets = DatasetOut(many=True)
    next_offset = serializers.IntegerField(allow_null=True)


def _plan_ids(request: Request) -> frozenset[int] | None:
    identity: KeyIdentity = request.user
    return identity.plan_ids


def _page_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = whole_number(raw, maximum)
    if value is None:
        raise ValidationFailed(
            f"{name} is a whole number up to {maximum}.",
            details={"fields": {name: [f"A whole number, 0 to {maximum}."]}},
        )
    return value


def _plan(request: Request, key: str | None) -> MigrationPlan | None:
    identity: KeyIdentity = request.user
    if key is None:
        if identity.plan_ids is not None:
            raise DomainError(
                "This API key sees only the plans on its list: name one of them as plan.",
                code="forbidden",
                status=403,
            )
        return None
    plan = MigrationPlan.objects.select_related("candidate_model__provider").filter(key=key).first()
    if plan is None or not identity.may_see(plan.pk):
        raise NotFound(
            f"No plan with key {key!r}.", code="plan_not_found", details={"field": "plan"}
        )
    return plan


def _header(body: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(str(k)[:64] for k in body if k not in DatasetIn().fields)
    if unknown:
        raise ValidationFailed(
            "Unknown fields.", details={"fields": {k: ["Unknown field."] for k in unknown}}
        )
    form = DatasetHeaderIn(data={k: v for k, v in body.items() if k != "items"})
    if not form.is_valid():
        raise ValidationFailed(
            "The dataset is not valid.", details={"fields": error_paths(form.errors)}
        )
    return dict(form.validated_data)


def _detail(dataset: Dataset, request: Request) -> dict[str, Any]:
    offset = _page_param(request, "offset", 0, MAX_ITEMS)
    limit = _page_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
    page = selectors.item_page(dataset, offset=offset, limit=limit)
    end = offset + limit
    return {
        **selectors.summary(dataset),
        "items": [selectors.item_body(item) for item in page],
        "next_offset": end if end < dataset.item_count else None,
    }


class _DatasetsAPI(APIView):
    authentication_classes = [ApiKeyAuthentication]

    def get_permissions(self) -> list[BasePermission]:
        return [(READ if self.request.method in ("GET", "HEAD") else WRITE)()]


class DatasetsView(_DatasetsAPI):
    """``GET /api/v1/datasets`` (the sets this key sees) and ``POST`` (make one)."""

    def get(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is not None and validation.name_problem(name):
            return Response(
                {"datasets": [], "next_offset": None}
            )  # no set has such a name (nor may a query hold it)
        offset = _page_param(request, "offset", 0, 2**31 - 1)
        limit = _page_param(request, "limit", DEFAULT_PAGE, MAX_PAGE)
        sets = selectors.listing(plan_ids=_plan_ids(request), name=name)
        page = list(sets[offset : offset + limit + 1])
        return Response(
            {
                "datasets": [selectors.summary(d) for d in page[:limit]],
                "next_offset": offset + limit if len(page) > limit else None,
            }
        )

    def post(self, request: Request) -> Response:
        body = read_json_body(request)
        if not isinstance(body, Mapping):
            raise ValidationFailed(
                "The body is a dataset (a JSON object).",
                details={"fields": {"body": ["A JSON object."]}},
            )
        header = _header(body)
        shadow = header["shadow"]
        if (shadow is None) == ("items" not in body):
            raise ValidationFailed(
                "Give items, or shadow to draw the set from a plan's shadow samples (not both).",
                details={"fields": {"items": ["items or shadow, one of them."]}},
            )
        if shadow is not None and header["plan"] is None:
            raise ValidationFailed(
                "shadow needs the plan whose samples to draw from.",
                details={"fields": {"plan": ["Required with shadow."]}},
            )
        plan = _plan(request, header["plan"])
        created_by = f"api key {request.user.name}"
        if shadow is not None:
            assert plan is not None
            dataset = services.dataset_from_shadow(
                plan=plan,
                name=header["name"],
                created_by=created_by,
                description=header["description"],
                plan_ids=_plan_ids(request),
                **shadow,
            )
        else:
            dataset = services.dataset_create(
                name=header["name"],
                items=body["items"],
                created_by=created_by,
                source=DatasetSource.API,
                description=header["description"],
                plan=plan,
                plan_ids=_plan_ids(request),
            )
        return Response(selectors.summary(dataset), status=201)


class DatasetView(_DatasetsAPI):
    """``GET /api/v1/datasets/{name}``: the latest version and a page of its items."""

    def get(self, request: Request, name: str) -> Response:
        dataset = selectors.get(name, plan_ids=_plan_ids(request))
        return Response(_detail(dataset, request))


class DatasetVersionView(_DatasetsAPI):
    """``GET`` and ``DELETE /api/v1/datasets/{name}/{version}``."""

    def _dataset(self, request: Request, name: str, version: str) -> Dataset:
        # Any path segment reaches here (a JSON 404 for "v2" or a number past the column,
        # not the resolver's page).
        number = whole_number(version, MAX_VERSION)
        if number is None or number < 1:
            raise NotFound(
                f"No version {version[:20]!r} of dataset {name!r}: versions are 1, 2, ...",
                code="dataset_not_found",
                details={"field": "version"},
            )
        return selectors.get(name, number, plan_ids=_plan_ids(request))

    def get(self, request: Request, name: str, version: str) -> Response:
        return Response(_detail(self._dataset(request, name, version), request))

    def delete(self, request: Request, name: str, version: str) -> Response:
        services.dataset_delete(dataset=self._dataset(request, name, version))
        return Response(status=204)
