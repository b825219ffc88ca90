"""The judge's page (issue 15, item 4): on one page, whether to trust the plan's judge - its
agreement with people (Cohen's kappa with its interval, against the plan's floor), its position
and length biases, what its guardrails may do and why, its calls and spend today against its
budget - and the labelling itself: a random judged shadow pair of the current run, blind (model
names hidden, the candidate's side drawn per pair and person), one key press each.

Viewing needs what the plan's dashboard needs; labelling also needs the 'Can add judge label'
permission (a label moves the judge's trust, and with it what its guardrails may do)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from migrations_app.dashboard.views import _error, _plan, plan_viewer_required
from migrations_app.errors import DomainError
from migrations_app.judge import labels
from migrations_app.judge.calibration import Calibration
from migrations_app.judge.measures import JUDGE_MEASURES
from migrations_app.judge.selectors import run_calibration, spend_today
from migrations_app.models import MigrationPlan

LABEL_PERMISSION = "migrations_app.add_judgelabel"
#: What each key press stores, as the buttons say it.
CHOICE_WORDS = (("a", "A is better", "1"), ("tie", "Tie", "2"), ("b", "B is better", "3"),
                ("skip", "Skip", "s"))  # fmt: skip


class LabelForm(forms.Form):
    pair = forms.CharField(max_length=64)
    choice = forms.ChoiceField(choices=[(c, c) for c in labels.CHOICES])


def labeller_of(request: HttpRequest) -> str:
    """Labels given on the page are the person's: one label per person and pair."""
    return f"user {request.user.pk}"


def _percent(value: float) -> str:
    return "-" if value != value else f"{value:.0%}"  # NaN: no decisive verdict yet


def trust_rows(trust: Calibration) -> list[tuple[str, str, str]]:
    """The calibration in words: (what, the figure, what it means)."""
    floor = trust.floor
    kappa = (
        "not computable yet"
        if trust.kappa != trust.kappa
        else f"{trust.kappa:.2f} (95% interval {trust.kappa_lower:.2f} to {trust.kappa_upper:.2f})"
    )
    return [
        ("Human labels", f"{trust.labels} of {floor.min_labels}",
         "labelled pairs the judge gave a verdict on (skips not counted)"),
        ("Agreement", _percent(trust.agreement), "the judge and the person chose the same"),
        ("Cohen's kappa", kappa,
         f"agreement beyond chance; the plan asks for a lower bound of at least "
         f"{floor.min_kappa:.2f}"),
        ("Position bias", f"{_percent(trust.position.share)} first shown "
         f"({trust.position.hits} of {trust.position.n} decisive verdicts)",
         "50% is none: the order is randomised per pair, so a judge far from it prefers a side"),
        ("Length bias", f"{_percent(trust.length.share)} longer "
         f"({trust.length.hits} of {trust.length.n} decisive verdicts, unequal lengths)",
         "how often it prefers the longer answer"),
    ]  # fmt: skip


def _context(request: HttpRequest, plan: MigrationPlan) -> dict[str, Any]:
    trust = run_calibration(plan)
    labeller = labeller_of(request)
    can_label = request.user.has_perm(LABEL_PERMISSION)
    pair = None
    if plan.judge_model_id is not None and can_label:
        pairs = labels.label_pairs(plan=plan, labeller=labeller, count=1)
        pair = pairs[0] if pairs else None
    guardrails = [g for g in plan.guardrails.all() if g.metric in JUDGE_MEASURES]
    return {
        "plan": plan,
        "trust": trust,
        "rows": trust_rows(trust) if trust is not None else [],
        "spend": spend_today(plan, timezone.now()),
        "guardrails": guardrails,
        "pair": pair,
        "can_label": can_label,
        "mine": labels.labelled_count(plan, labeller),
        "everyone": labels.labelled_count(plan),
        "choices": CHOICE_WORDS,
    }


@plan_viewer_required
@require_http_methods(["GET", "POST"])
def plan_judge(request: HttpRequest, key: str) -> HttpResponse:
    plan = _plan(key)
    if request.method == "POST":
        if not request.user.has_perm(LABEL_PERMISSION):
            return _error(request, 403, "permission_denied",
                          "Labelling needs the 'Can add judge label' permission.")  # fmt: skip
        form = LabelForm(request.POST)
        if not form.is_valid():
            field = next(iter(form.errors))
            return _error(request, 400, "validation_failed", form.errors[field][0], field)
        label = labels.LabelIn(pair=form.cleaned_data["pair"], choice=form.cleaned_data["choice"])
        try:
            labels.label_record(
                plan=plan, labeller=labeller_of(request), labels=[label], user=request.user
            )
        except DomainError as exc:
            return _error(request, exc.status, exc.code, exc.message, "pair")
        return HttpResponseRedirect(reverse("plan-judge", args=[plan.key]))
    return render(request, "turnout/judge.html", _context(request, plan))
