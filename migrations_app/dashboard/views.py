"""The plan dashboard, its live partial, the act confirmation, and the migration report.

Thin: each view reads through ``dashboard.selectors`` / ``dashboard.report`` and renders;
acting calls one lifecycle service from ``plans.py`` (compare-and-set, audited). Viewing
needs staff; acting also needs the ``operate_migrationplan`` permission, checked on the
server for every POST whatever the page showed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from migrations_app import plans
from migrations_app.admin import OPERATE_PERMISSION, ActForm
from migrations_app.dashboard import charts, report
from migrations_app.dashboard import selectors as sel
from migrations_app.errors import DomainError
from migrations_app.models import MigrationPlan

# The buttons on the page; start and complete stay in the admin (a new run is a bigger step).
DASHBOARD_ACTIONS = ("advance", "pause", "resume", "rollback")
REFRESH_SECONDS = 3
MAX_HOURS = int(sel.MAX_RANGE.total_seconds() // 3600)


def _error(
    request: HttpRequest, status: int, code: str, message: str, field: str = ""
) -> HttpResponse:
    context = {"code": code, "message": message, "field": field, "status": status}
    return render(request, "turnout/error.html", context, status=status)


def _plan(key: str) -> MigrationPlan:
    plan = sel.plan_for_dashboard(key)
    if plan is None:
        raise Http404(f"No plan with key {key!r}.")
    return plan


def _span(request: HttpRequest) -> timedelta | None | HttpResponse:
    raw = request.GET.get("hours")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_HOURS:
        return _error(
            request, 400, "invalid_range", f"hours must be a whole number from 1 to {MAX_HOURS}.",
            "hours",
        )  # fmt: skip
    return timedelta(hours=int(raw))


def _context(request: HttpRequest, plan: MigrationPlan, span: timedelta | None) -> dict[str, Any]:
    data = sel.dashboard_data(plan, now=timezone.now(), span=span)
    may_operate = request.user.has_perm(OPERATE_PERMISSION)
    allowed = [a for a in DASHBOARD_ACTIONS if plan.status in plans.TRANSITIONS[a][0]]
    return {
        "plan": plan,
        "d": data,
        "charts": charts.window_charts(
            data.windows, start=data.since, end=data.until, step_minutes=data.step_minutes
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


@staff_member_required
@require_GET
def plan_dashboard(request: HttpRequest, key: str) -> HttpResponse:
    plan = _plan(key)
    span = _span(request)
    if isinstance(span, HttpResponse):
        return span
    return render(request, "turnout/dashboard.html", _context(request, plan, span))


@staff_member_required
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


@staff_member_required
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
    raw_version = source.get("version", "")
    version = int(raw_version) if raw_version.isdigit() else plan.version
    form = ActForm(request.POST or None, action=action)
    status = 200
    if request.method == "POST":
        if not raw_version.isdigit():
            form.add_error(None, "The page did not say which version you saw; reload it.")
            status = 400
        elif form.is_valid():
            try:
                plans.LIFECYCLE[action](
                    plan_key=plan.key,
                    actor=plans.Actor.for_user(request.user),
                    reason=form.cleaned_data["reason"],
                    expected_version=version,
                )
            except DomainError as exc:
                form.add_error(None, f"{exc.message} ({exc.code})")
                status = exc.status
            else:
                messages.success(request, f"{plan.key}: {action} done.")
                return HttpResponseRedirect(reverse("plan-dashboard", args=[plan.key]))
        else:
            status = 400
    context = {"plan": plan, "action": action, "form": form, "version": version}
    return render(request, "turnout/act.html", context, status=status)


@staff_member_required
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
