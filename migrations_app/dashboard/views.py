"""The plan dashboard, its live partial, the act confirmation, and the migration report.

Thin: each view reads through ``dashboard.selectors`` / ``dashboard.report`` and renders;
acting calls one lifecycle service from ``lifecycle.py`` (compare-and-set, audited). Every page
needs staff and the ``view_migrationplan`` permission (they show production prompts and
answers); acting also needs ``operate_migrationplan``, checked on the server for every
request whatever the page showed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from migrations_app.admin.forms import OPERATE_PERMISSION, ActForm
from migrations_app.dashboard import charts, home_page, plan_forms, plan_preview, report, selectors
from migrations_app.errors import DomainError
from migrations_app.models import MigrationPlan
from migrations_app.plans import edits, lifecycle, templates
from migrations_app.plans.json_checks import whole_number
from migrations_app.plans.preview import Traffic
from migrations_app.plans.start_checks import start_checks
from migrations_app.plans.validation import plan_check

# The buttons on the page; complete stays in the admin. Start shows the start checks first.
DASHBOARD_ACTIONS = ("start", "advance", "pause", "resume", "rollback")
REFRESH_SECONDS = 3
VIEW_PERMISSION = "migrations_app.view_migrationplan"
ADD_PERMISSION = "migrations_app.add_migrationplan"
DEFAULT_TEMPLATE = "standard-chat"
MAX_HOURS = int(selectors.MAX_RANGE.total_seconds() // 3600)


def _error(
    request: HttpRequest, status: int, code: str, message: str, field: str = ""
) -> HttpResponse:
    context = {"code": code, "message": message, "field": field, "status": status}
    return render(request, "turnout/error.html", context, status=status)


def plan_viewer_required(
    view: Callable[..., HttpResponse],
) -> Callable[..., HttpResponse]:
    """Staff (else the admin's login page) with the plan view permission (else 403): staff
    status alone does not open production prompts and answers."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(VIEW_PERMISSION):
            return _error(
                request, 403, "permission_denied",
                "Plan dashboards and reports need the 'Can view migration plan' permission.",
            )  # fmt: skip
        return view(request, *args, **kwargs)

    return staff_member_required(guarded)


def _plan(key: str) -> MigrationPlan:
    plan = selectors.plan_for_dashboard(key)
    if plan is None:
        raise Http404(f"No plan with key {key!r}.")
    return plan


def _span(request: HttpRequest) -> timedelta | None | HttpResponse:
    raw = request.GET.get("hours")
    if raw is None or raw == "":
        return None
    hours = whole_number(raw, MAX_HOURS)
    if not hours:
        return _error(
            request, 400, "invalid_range", f"hours must be a whole number from 1 to {MAX_HOURS}.",
            "hours",
        )  # fmt: skip
    return timedelta(hours=hours)


def _context(request: HttpRequest, plan: MigrationPlan, span: timedelta | None) -> dict[str, Any]:
    data = selectors.dashboard_data(plan, now=timezone.now(), span=span)
    may_operate = request.user.has_perm(OPERATE_PERMISSION)
    allowed = [a for a in DASHBOARD_ACTIONS if plan.status in lifecycle.TRANSITIONS[a][0]]
    return {
        "plan": plan,
        "d": data,
        "charts": charts.window_charts(
            data.windows,
            start=data.since,
            end=data.until,
            step_minutes=data.step_minutes,
            verdicts=data.verdicts,
        ),
        "bound_charts": charts.bound_charts(
            data.bounds, data.verdicts, start=data.since, end=data.until
        ),
        "actions": allowed if may_operate else [],
        "may_operate": may_operate,
        "hours": request.GET.get("hours", ""),
        "refresh_seconds": REFRESH_SECONDS,
        "generated_at": timezone.now(),
    }


@plan_viewer_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Every plan with its state, and what needs a person: where to start."""
    data = home_page.home_data(now=timezone.now())
    return render(request, "turnout/home.html", {"h": data})


@plan_viewer_required
@require_GET
def plan_dashboard(request: HttpRequest, key: str) -> HttpResponse:
    plan = _plan(key)
    span = _span(request)
    if isinstance(span, HttpResponse):
        return span
    return render(request, "turnout/dashboard.html", _context(request, plan, span))


@plan_viewer_required
@require_GET
def plan_live(request: HttpRequest, key: str) -> HttpResponse:
    """The part of the page that changes, polled by the page's script."""
    plan = _plan(key)
    span = _span(request)
    if isinstance(span, HttpResponse):
        return span
    response = render(request, "turnout/_live.html", _context(request, plan, span))
    response["Cache-Control"] = "no-store"
    return response


@plan_viewer_required
@require_http_methods(["GET", "POST"])
def plan_act(request: HttpRequest, key: str, action: str) -> HttpResponse:
    """Confirm an action (reason required for a rollback, as in the admin) and apply it
    through the lifecycle service, conditional on the version the person saw."""
    if action not in DASHBOARD_ACTIONS:
        return _error(
            request, 404, "unknown_action",
            f"No action {action!r}; use one of {', '.join(DASHBOARD_ACTIONS)}.", "action",
        )  # fmt: skip
    if not request.user.has_perm(OPERATE_PERMISSION):
        return _error(
            request, 403, "permission_denied",
            "Acting on plans needs the 'Can start, advance, pause, resume, roll back and "
            "complete plans' permission.",
        )  # fmt: skip
    plan = _plan(key)
    source = request.POST if request.method == "POST" else request.GET
    seen_version = whole_number(source.get("version"), 2**31 - 1)
    version = plan.version if seen_version is None else seen_version
    form = ActForm(request.POST or None, action=action)
    status = 200
    if request.method == "POST":
        if seen_version is None:
            form.add_error(None, "The page did not say which version you saw; reload it.")
            status = 400
        elif form.is_valid():
            kwargs: dict[str, Any] = {}
            if action == "start":
                # The warnings the page showed: one that appeared since stops the start.
                kwargs["acknowledged"] = request.POST.getlist("acknowledge")
            try:
                lifecycle.LIFECYCLE[action](
                    plan_key=plan.key,
                    actor=lifecycle.Actor.for_user(request.user),
                    reason=form.cleaned_data["reason"],
                    expected_version=version,
                    **kwargs,
                )
            except DomainError as exc:
                form.add_error(None, f"{exc.message} ({exc.code})")
                status = exc.status
            else:
                messages.success(request, f"{plan.key}: {action} done.")
                return HttpResponseRedirect(reverse("plan-dashboard", args=[plan.key]))
        else:
            status = 400
    context = {
        "plan": plan,
        "action": action,
        "form": form,
        "version": version,
        "checks": start_checks(plan) if action == "start" else None,
    }
    return render(request, "turnout/act.html", context, status=status)


@plan_viewer_required
@require_GET
def plan_report(request: HttpRequest, key: str) -> HttpResponse:
    """The migration report: HTML, or Markdown with ``?format=md``."""
    plan = _plan(key)
    fmt = request.GET.get("format", "html")
    if fmt not in ("html", "md"):
        return _error(request, 400, "invalid_format", "format is html or md.", "format")
    data = report.plan_report(plan, now=timezone.now())
    if data is None:
        return _error(
            request, 409, "plan_not_started",
            f"Plan {plan.key!r} has no run yet: there is nothing to report.",
        )  # fmt: skip
    if fmt == "md":
        response = render(
            request, "turnout/report.md", {"r": data}, content_type="text/markdown; charset=utf-8"
        )
        response["Content-Disposition"] = f'inline; filename="{plan.key}-report.md"'
        return response
    return render(request, "turnout/report.html", {"r": data, "plan": plan})


# --- the plan form -------------------------------------------------------------------------


def _typed_traffic(form: plan_forms.PlanForm) -> Traffic | None:
    data = form.cleaned_data if form.is_valid() else {}
    figures = [data.get(f"traffic_{n}") for n in ("rpm", "input_tokens", "output_tokens")]
    if any(f is None for f in figures):
        return None
    return Traffic(*figures)  # type: ignore[arg-type]


def _checked(forms_: plan_forms.PlanForms) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The forms as the validation service's input, and its errors (none checked when a field
    did not even parse: those errors are on their fields already)."""
    if not forms_.parsed():
        return {}, {}
    values = plan_forms.plan_values(forms_)
    return values, plan_check(values).errors


def _plan_page(
    request: HttpRequest,
    forms_: plan_forms.PlanForms,
    values: dict[str, Any],
    errors: dict[str, list[str]],
    status: int = 200,
) -> HttpResponse:
    context = {
        "forms": forms_,
        "catalog": plan_forms.catalog_rows(),
        "p": plan_preview.build(
            values, errors, typed_traffic=_typed_traffic(forms_.plan), now=timezone.now()
        ),
        "may_operate": request.user.has_perm(OPERATE_PERMISSION),
    }
    return render(request, "turnout/plan_new.html", context, status=status)


def plan_creator_required(
    view: Callable[..., HttpResponse],
) -> Callable[..., HttpResponse]:
    """Staff with the plan view and add permissions."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(ADD_PERMISSION):
            return _error(
                request, 403, "permission_denied",
                "Making plans needs the 'Can add migration plan' permission.",
            )  # fmt: skip
        return view(request, *args, **kwargs)

    return plan_viewer_required(guarded)


@plan_creator_required
@require_http_methods(["GET", "POST"])
def plan_new(request: HttpRequest) -> HttpResponse:
    """A new plan without JSON: the form, its preview, and the one validation
    (``plan_check``); saved as a draft through ``edits.plan_create_from``, then to its start
    confirmation (``start``) or its dashboard."""
    if request.method == "GET" or "use_template" in request.POST:
        chosen = request.POST.get("template", "") if request.method == "POST" else None
        if chosen is None:
            chosen = DEFAULT_TEMPLATE if templates.template_named(DEFAULT_TEMPLATE) else ""
        rows = templates.starting_rows(chosen or None)
        forms_ = plan_forms.bind(None, initial={"template": chosen}, **rows)
        if request.method == "POST":  # keep what the person typed; only the rows change
            forms_.plan = plan_forms.PlanForm(request.POST)
        values = {"phases": rows["phases"], "guardrails": rows["guardrails"]}
        if forms_.plan.is_bound and forms_.plan.is_valid():
            values.update(
                {
                    f"{arm}_model": forms_.plan.cleaned_data.get(f"{arm}_model")
                    for arm in plan_forms.ARMS
                }
            )
        return _plan_page(request, forms_, values, {})
    forms_ = plan_forms.bind(request.POST)
    values, errors = _checked(forms_)
    parsed = bool(values)
    if parsed and not errors and ("create" in request.POST or "create_start" in request.POST):
        try:
            with transaction.atomic():
                plan = edits.plan_create_from(
                    values, owner=request.user, actor=lifecycle.Actor.for_user(request.user)
                )
        except IntegrityError:
            # Another person saved this key between the check and the insert.
            errors = {"key": [f"A plan with key {values['key']!r} exists."]}
        else:
            messages.success(request, f"{plan.key}: created as a draft.")
            if "create_start" in request.POST:
                return HttpResponseRedirect(
                    reverse("plan-act", args=[plan.key, "start"]) + f"?version={plan.version}"
                )
            return HttpResponseRedirect(reverse("plan-dashboard", args=[plan.key]))
    plan_forms.place_errors(forms_, errors)
    failed = bool(errors) or not parsed
    return _plan_page(request, forms_, values, errors, status=400 if failed else 200)


@plan_creator_required
@require_POST
def plan_new_preview(request: HttpRequest) -> HttpResponse:
    """The preview of the form as it stands, for the page's script: never saves."""
    forms_ = plan_forms.bind(request.POST)
    values, errors = _checked(forms_)
    context = {
        "p": plan_preview.build(
            values, errors, typed_traffic=_typed_traffic(forms_.plan), now=timezone.now()
        )
    }
    response = render(request, "turnout/_plan_preview.html", context)
    response["Cache-Control"] = "no-store"
    return response
