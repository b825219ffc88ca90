"""``manage.py turnout_setup``: a demo admin user and a demo plan, so a fresh install has something to look at.

Idempotent: an existing user keeps its password, an existing plan is left alone.
"""

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from migrations_app.models import MigrationPlan
from migrations_app.plans import edits, lifecycle
from migrations_app.plans.phases import STANDARD_PLAYBOOK
from migrations_app.plans.templates import playbook_text

DEMO_PLAN = "support-chat"


class Command(BaseCommand):
    help = "Create the demo admin user and the demo plan if they do not exist, and print the login."

    def handle(self, *args: Any, **options: Any) -> None:
        username = os.environ.get("TURNOUT_ADMIN_USER", "admin")
        password = os.environ.get("TURNOUT_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user = user_model.objects.create_superuser(
                username=username, email="", password=password
            )
            login = f"{username} / {password}"
        else:
            login = (
                f"{username} / (unchanged; set TURNOUT_ADMIN_PASSWORD and delete the user to reset)"
            )
        if not MigrationPlan.objects.filter(key=DEMO_PLAN).exists():
            edits.plan_create(
                key=DEMO_PLAN,
                name="Support chat: GPT-4o → Claude Sonnet 4",
                description="Demo plan: the standard playbook "
                f"({playbook_text(STANDARD_PLAYBOOK, detail=False)}).",
                control={
                    "model": "openai:gpt-4o-2024-08-06",
                    "params": {"temperature": 0.2, "max_tokens": 1024},
                },
                candidate={
                    "model": "anthropic:claude-sonnet-4-20250514",
                    "params": {"temperature": 0.2, "max_tokens": 1024},
                },
                owner=user,
                actor=lifecycle.Actor.for_user(user),
            )
        self.stdout.write(self.style.SUCCESS(f"Admin login: {login}"))
