"""The judge's page (issue 15, item 4): whether to trust the judge on one page, and the blind
labelling a person does there, mapped back to the arms; hostile posts refused, never a 500."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from migrations_app.judge.labels import candidate_position
from migrations_app.models import JudgeLabel, ShadowSample, ShadowStatus
from tests.factories import make_plan, make_user
from tests.guardrails.test_judge_engine import judged_plan, label_pairs

pytestmark = pytest.mark.django_db

CONTROL_TEXT = "Your order ships tomorrow."
CANDIDATE_TEXT = "I cannot help with that."


def url(plan) -> str:
    return f"/plans/{plan.key}/judge"


@pytest.fixture
def admin() -> Client:
    user = make_user("alice")  # a superuser: every permission
    client = Client()
    client.force_login(user)
    client.user = user  # type: ignore[attr-defined]
    return client


def judged_pair(plan) -> ShadowSample:
    now = timezone.now()
    return ShadowSample.objects.create(
        sample_id=uuid.uuid4().hex, plan=plan, run=plan.current_run, stage=plan.current_stage,
        decision_id=uuid.uuid4().hex, unit="u-1",
        request={"messages": [{"role": "system", "content": "SECRET SYSTEM PROMPT"},
                              {"role": "user", "content": "Where is my order?"}]},
        control={"text": CONTROL_TEXT}, candidate={"text": CANDIDATE_TEXT},
        status=ShadowStatus.DONE, created_at=now, completed_at=now,
        comparison={"judge": {"winner": "control", "judge_winner": "A", "score": -1.0}},
    )  # fmt: skip


def test_an_untrusted_judge_says_why_with_its_figures(admin: Client) -> None:
    plan = judged_plan()
    label_pairs(plan, 12)
    page = admin.get(url(plan))
    assert page.status_code == 200
    body = page.content.decode()
    assert "Not yet: they only alert" in body
    assert "12 of the 50 human labels" in body  # the floor, in words
    assert "12 of 50" in body and "Cohen&#x27;s kappa" in body
    assert "Position bias" in body and "Length bias" in body
    assert "0 calls, $0.0000 (no daily budget)" in body.replace("\n  ", " ")


def test_a_trusted_judge_says_its_guardrails_may_act(admin: Client) -> None:
    plan = judged_plan()
    label_pairs(plan, 60)
    body = admin.get(url(plan)).content.decode()
    assert "its guardrail may roll back or hold" in body and "Not yet" not in body


def test_a_person_labels_a_pair_blind_and_it_maps_back_to_the_arms(admin: Client) -> None:
    plan = judged_plan()
    sample = judged_pair(plan)
    body = admin.get(url(plan)).content.decode()
    assert "Where is my order?" in body and "SECRET SYSTEM PROMPT" not in body
    assert plan.control_model.model_id not in body.split('id="label"')[1]  # names hidden
    labeller = f"user {admin.user.pk}"  # type: ignore[attr-defined]
    shown_first = CANDIDATE_TEXT if candidate_position(sample.pk, labeller) == "A" else CONTROL_TEXT
    a = body.index('id="answer-a"')
    assert body.index(shown_first, a) < body.index('id="answer-b"')
    # The person prefers the answer shown as A: the label says which arm that was.
    response = admin.post(url(plan), {"pair": sample.pk, "choice": "a"})
    assert response.status_code == 302
    label = JudgeLabel.objects.get(sample=sample)
    assert label.choice == ("candidate" if shown_first == CANDIDATE_TEXT else "control")
    assert label.candidate_position == candidate_position(sample.pk, labeller)
    after = admin.get(url(plan)).content.decode()
    assert "You have labelled 1 pair on this run" in after
    assert "No judged pair is waiting for you" in after  # the only pair is done


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"pair": "nope", "choice": "a"}, "pair"),
        ({"pair": "a\x00b", "choice": "a"}, "pair"),
        ({"pair": "x" * 65, "choice": "a"}, "pair"),
        ({"choice": "a"}, "pair"),
        ({"pair": "p", "choice": "control"}, "choice"),
    ],
)
def test_a_bad_label_is_refused_by_field(admin: Client, data: dict, field: str) -> None:
    plan = judged_plan()
    judged_pair(plan)
    response = admin.post(url(plan), data)
    assert response.status_code == 400
    assert f'<code class="error-field">{field}</code>' in response.content.decode()
    assert not JudgeLabel.objects.exists()


def test_labelling_needs_its_permission() -> None:
    plan = judged_plan()
    sample = judged_pair(plan)
    viewer = make_user("viewer", superuser=False)
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_migrationplan"))
    client = Client()
    client.force_login(viewer)
    page = client.get(url(plan)).content.decode()
    assert "Labelling needs the 'Can add judge label' permission" in page
    assert CANDIDATE_TEXT not in page  # no pair shown
    assert client.post(url(plan), {"pair": sample.pk, "choice": "a"}).status_code == 403
    assert not JudgeLabel.objects.exists()


def test_a_plan_without_a_judge(admin: Client) -> None:
    plan = make_plan("no-judge")
    body = admin.get(url(plan)).content.decode()
    assert "This plan has no judge model" in body
