"""The migration report, checked against the aggregates it was built from."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from migrations_app.dashboard import format as fmt
from migrations_app.dashboard.report import md_text, plan_report
from migrations_app.guardrails import engine, stats
from migrations_app.models import MigrationPlan, PlanStatus, ShadowAggregate
from migrations_app.outcomes import selectors
from migrations_app.plans import lifecycle
from tests.dashboard.data import feed, running_plan
from tests.factories import make_plan, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def rolled_back():
    plan = running_plan("p1", hours_ago=2)
    start = timezone.now() - timedelta(minutes=90)
    for arm, latency, errors in (("control", 600.0, 0.01), ("candidate", 1500.0, 0.02)):
        feed(plan.current_stage, start=start, minutes=90, per_minute=20, arm=arm,
             latency_ms=latency, error_rate=errors)  # fmt: skip
    split = plan.current_stage
    assert engine.plan_evaluate(plan_id=plan.pk).acted
    plan.refresh_from_db()
    assert plan.status == PlanStatus.ROLLED_BACK
    return plan, split


def test_report_figures_are_the_aggregates_through_stats(rolled_back) -> None:
    plan, split = rolled_back
    report = plan_report(plan, now=timezone.now())
    assert report is not None and report.ended
    totals = selectors.stage_totals(split)
    control, candidate = totals["control"], totals["candidate"]
    rows = {m.metric: m for m in report.metrics}
    assert report.compared.control_requests == control.requests == 1800
    assert rows["error_rate"].control.value == control.errors / control.requests
    assert rows["error_rate"].candidate.value == candidate.errors / candidate.requests
    est, lo, hi = stats.quantile_interval(candidate.latency, 0.95, plan.alpha)
    assert (rows["latency_p95"].candidate.value, rows["latency_p95"].candidate.lower) == (est, lo)
    assert rows["latency_p95"].candidate.upper == hi
    guardrail = plan.guardrails.get(metric="latency_p95")
    expected = stats.evaluate_metric(
        "latency_p95", control, candidate, tolerance=guardrail.tolerance,
        tolerance_kind=guardrail.tolerance_kind, alpha=plan.alpha,
    )  # fmt: skip
    assert rows["latency_p95"].comparison == expected and expected.status == "regressed"
    assert rows["satisfaction"].control.value == control.feedback_sum / control.feedback_n
    assert rows["cost_per_request"].candidate.value == pytest.approx(0.002)
    # A metric with no guardrail has per-arm figures and no comparison.
    assert rows["latency_p50"].comparison is None
    assert [r.actor for r in report.rollbacks] == ["rollback engine"]
    assert report.rollbacks[0].reasons and "latency_p95" in " ".join(report.rollbacks[0].reasons)
    run = plan.runs.get()
    assert report.duration == run.ended_at - run.started_at


def test_report_page_and_markdown(rolled_back) -> None:
    plan, _ = rolled_back
    client = Client()
    client.force_login(make_user("olga"))
    html = client.get("/plans/p1/report").content.decode().replace("&#x27;", "'")
    report = plan_report(plan, now=timezone.now())
    for row in report.metrics:
        assert row.comparison_text in html
    assert report.rollbacks[0].reason in html
    assert fmt.duration(report.duration) in html

    md = client.get("/plans/p1/report?format=md")
    assert md["Content-Type"] == "text/markdown; charset=utf-8"
    text = md.content.decode()
    assert text.startswith("# Migration report: Test plan (`p1`)")
    assert "| model | `openai:gpt-4o-2024-08-06` | `anthropic:claude-sonnet-4-20250514` |" in text
    p95 = next(r for r in report.metrics if r.metric == "latency_p95")
    cells = (p95.control_text, p95.candidate_text, p95.comparison_text)
    assert f"| p95 latency | {' | '.join(md_text(c) for c in cells)} |" in text
    assert "&lt;" not in text and "&#x27;" not in text  # Markdown is not HTML-escaped
    assert "\n- " in text.split("## Rollbacks", 1)[1]


def test_a_plan_never_started_has_no_report() -> None:
    make_plan("draft")
    client = Client()
    client.force_login(make_user("olga"))
    response = client.get("/plans/draft/report")
    assert response.status_code == 409 and b"plan_not_started" in response.content


def test_the_report_carries_the_shadow_comparison_of_every_run() -> None:
    plan = running_plan("p1", phases=None)  # the standard playbook: shadow first
    ShadowAggregate.objects.create(
        stage=plan.current_stage,
        data={"n": 40, "candidate_only": 3, "control_only": 1, "both": 0, "neither": 36,
              "normalized_match_n": 40, "normalized_match_sum": 10.0},
    )  # fmt: skip
    report = plan_report(plan, now=timezone.now())
    assert report is not None and report.shadow is not None
    assert (report.shadow.pairs, report.shadow.candidate_only) == (40, 3)
    client = Client()
    client.force_login(make_user("olga"))
    text = client.get("/plans/p1/report?format=md").content.decode()
    shadow = text.split("## Shadow comparison", 1)[1].split("## Rollbacks", 1)[0]
    assert "40 requests answered by both models" in shadow
    assert "the candidate failed on 3 where control answered" in shadow
    assert "| identical after normalising case, spacing, punctuation | 25.0% | 40 |" in shadow
    html = client.get("/plans/p1/report").content.decode()
    assert "40 requests answered by both models" in html


# --- the Markdown report escapes what people and the engine wrote (issue 14) --------------

HOSTILE = (
    "<img src=x onerror=alert(1)> [click](javascript:alert(1)) ![t](https://evil.example/p.png)"
    " **b** _i_ ~~s~~ `c` | d &amp; \\* $x$\n# injected heading\n<script>alert(2)</script>\r\n"
    "- item\u2028> quote\x1b[31m"
)
# What a reader must see: the same characters, whitespace runs as one space, controls gone.
SHOWN = " ".join(HOSTILE.replace("\x1b", " ").split())


def _renderer() -> Any:
    from markdown_it import MarkdownIt

    # html on (CommonMark's default): raw HTML that got through would be passed through.
    return MarkdownIt("commonmark").enable("table").enable("strikethrough")


def _visible(inline: Any) -> str:
    """The text of an inline token, failing on any markup other than text and code spans."""
    kinds = {child.type for child in inline.children}
    assert kinds <= {"text", "code_inline", "softbreak"}, kinds
    return "".join(c.content if c.type != "softbreak" else " " for c in inline.children)


def test_the_markdown_report_shows_names_prompts_and_reasons_as_written() -> None:
    plan = running_plan("p1")
    MigrationPlan.objects.filter(pk=plan.pk).update(
        name=HOSTILE,
        candidate_prompt_mode="suffix",
        candidate_prompt_text=f"``` fenced ``` and {HOSTILE}",
    )
    lifecycle.plan_rollback(
        plan_key="p1", actor=lifecycle.Actor("user", f"1. {HOSTILE}"), reason=f"- {HOSTILE}"
    )
    client = Client()
    client.force_login(make_user("olga"))
    text = client.get("/plans/p1/report?format=md").content.decode()
    tokens = _renderer().parse(text)
    html = _renderer().render(text)
    for tag in ("<img", "<script", "<a ", "<strong>b", "<em>", "<s>", "<h1>injected", "<li>item"):
        assert tag not in html, tag

    headings = [
        t.tag + ":" + tokens[i + 1].content[:20]
        for i, t in enumerate(tokens)
        if t.type == "heading_open"
    ]
    assert [h.split(":", 1)[0] for h in headings] == ["h1"] + ["h2"] * 5, headings
    title = next(tokens[i + 1] for i, t in enumerate(tokens) if t.type == "heading_open")
    assert _visible(title) == f"Migration report: {SHOWN} (p1)"

    cells = [tokens[i + 1] for i, t in enumerate(tokens) if t.type == "td_open"]
    prompt_row = next(i for i, c in enumerate(cells) if _visible(c) == "prompt text")
    assert _visible(cells[prompt_row + 1]) == "-"
    assert _visible(cells[prompt_row + 2]) == f"``` fenced ``` and {SHOWN}"  # one code span

    items = [tokens[i + 2] for i, t in enumerate(tokens) if t.type == "list_item_open"]
    rollback = next(_visible(i) for i in items if "by 1." in _visible(i))
    assert rollback.endswith(f"by 1. {SHOWN}: - {SHOWN}")


# --- GFM autolinks (review defect L2) ------------------------------------------------------
# GitHub's renderer (cmark-gfm, here through cmarkgfm) links bare URLs, www. names and email
# addresses, and it links addresses after backslash escapes are resolved: escaping is not
# enough. Each must reach the reader as its characters, never as a link.

LINKISH = (
    "see https://evil.example/login?x=1 or http://x.example, ftp://files.example/a_b,"
    " www.evil.example/path (www.x.example) *www.y.example* mail bob.smith+tag@evil.example"
    " or mailto:ops@evil.example, xmpp:chat@evil.example/r, a_b@c-d.example."
)


def _gfm(text: str) -> str:
    import cmarkgfm
    from cmarkgfm.cmark import Options

    # Raw HTML kept (a sanitizer's choice, not the renderer's): what got through shows.
    return str(cmarkgfm.github_flavored_markdown_to_html(text, options=Options.CMARK_OPT_UNSAFE))


def _shown(html: str) -> str:
    """The text a reader sees in rendered HTML: tags dropped, entities decoded."""
    import html as html_lib
    import re

    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", html)).split())


def test_gfm_links_the_unescaped_text() -> None:
    # The test's renderer does link these: without the escaping they would be links.
    assert _gfm(LINKISH).count("<a href=") == 10


@pytest.mark.parametrize(
    "value",
    [LINKISH, HOSTILE + " " + LINKISH, "1. www.x.example", "- bob@evil.example|x@y.example"],
)
def test_md_text_links_nothing_under_gfm(value: str) -> None:
    html = _gfm(md_text(value))
    assert "<a " not in html, html
    assert _shown(html) == " ".join(value.replace("\x1b", " ").split())
    # In a table cell too (pipes are cell separators there).
    cell = _gfm(f"| a |\n|---|\n| {md_text(value)} |\n")
    assert "<a " not in cell and cell.count("<td>") == 1, cell


def test_the_markdown_report_links_no_url_or_address_in_names_and_reasons() -> None:
    plan = running_plan("p1")
    name = "Checkout www.evil.example/x by bob@evil.example (https://evil.example)"
    MigrationPlan.objects.filter(pk=plan.pk).update(name=name, description=LINKISH)
    lifecycle.plan_rollback(
        plan_key="p1", actor=lifecycle.Actor("user", "ops@evil.example"), reason=LINKISH
    )
    client = Client()
    client.force_login(make_user("olga"))
    text = client.get("/plans/p1/report?format=md").content.decode()
    html = _gfm(text)
    assert "<a " not in html, html
    shown = _shown(html)
    assert f"Migration report: {name} (p1)" in shown
    assert f"by ops@evil.example: {LINKISH}" in shown
