"""What several admin pages share: a form's errors from a service, and the lifecycle action form
(the plan admin's and the dashboard's).
"""

from __future__ import annotations

from typing import Any

from django import forms

from migrations_app.plans import lifecycle

ACTIONS = lifecycle.LIFECYCLE


OPERATE_PERMISSION = "migrations_app.operate_migrationplan"


def add_errors(form: forms.BaseForm, errors: dict[str, list[str]]) -> None:
    for field, field_messages in errors.items():
        for message in field_messages:
            form.add_error(field if field in form.fields else None, message)


class ActForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def __init__(self, *args: Any, action: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = action == "rollback"
