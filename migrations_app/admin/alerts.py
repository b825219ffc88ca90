"""The alerts' admin: channels (with a test page), and the outbox's deliveries with each attempt."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from migrations_app import secret_policy
from migrations_app.alerts import AlertMessage, build_test_message, outbox
from migrations_app.alerts.base import shown_location
from migrations_app.models import (
    AlertAttempt,
    AlertChannel,
    AlertDelivery,
    MigrationPlan,
)


def plan_test_message(plan: MigrationPlan, now: datetime) -> AlertMessage:
    """The test alert of ``plan`` (its key, name, run and dashboard page): what the channel
    admin's and the plan admin's "Send a test alert" queue."""
    return build_test_message(
        plan_key=plan.key,
        plan_name=plan.name,
        run=plan.current_run.number if plan.current_run else 0,
        dashboard_url=f"{settings.SITE_URL}/plans/{plan.key}/",
        now=now,
    )


@admin.register(AlertChannel)
class AlertChannelAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "enabled", "destination")
    actions = ["send_test_alert"]

    @admin.action(description="Send a test alert to the selected channels", permissions=["change"])
    def send_test_alert(self, request: HttpRequest, queryset: QuerySet[AlertChannel]) -> None:
        """Through the outbox like any page, to this channel only. An outbox row belongs to a
        plan, and the message names one: the most recently updated plan using the channel."""
        now = timezone.now()
        queued, unused = 0, []
        for channel in queryset.order_by("pk"):
            plan = channel.plans.order_by("-updated_at", "-pk").first()
            if plan is None:
                unused.append(channel.name)
                continue
            message = plan_test_message(plan, now)
            with transaction.atomic():
                queued += len(
                    outbox.alert_enqueue(plan=plan, message=message, now=now, channels=[channel])
                )
        if queued:
            self.message_user(
                request, f"Queued {queued} test alert(s); see Alert deliveries for the outcome."
            )
        if unused:
            self.message_user(
                request,
                f"Not sent to {', '.join(unused)}: add the channel to a plan first.",
                level=messages.WARNING,
            )

    @admin.display(description="destination")
    def destination(self, obj: AlertChannel) -> str:
        if obj.kind == "email":
            return obj.recipients
        if not obj.url_env:
            return "(default endpoint)"
        if secret_policy.alert_var_problem(obj.url_env):
            return f"${obj.url_env} → (not allowed)"  # never read, as in delivery
        # Webhook URLs carry their secret in the path, other URLs a password: the host only.
        return f"${obj.url_env} → {shown_location(os.environ.get(obj.url_env, ''))}"


class AlertAttemptInline(admin.TabularInline):
    model = AlertAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = ("at", "ok", "status_code", "latency_ms", "error")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(admin.ModelAdmin):
    """The outbox, read-only: what was paged where, and how each attempt went."""

    list_display = (
        "created_at", "plan", "channel", "event", "severity", "status", "attempts", "repeats",
        "last_error",
    )  # fmt: skip
    list_filter = ("status", "event", "channel")
    search_fields = ("plan__key", "dedup_key")
    list_select_related = ("plan", "channel")
    inlines = [AlertAttemptInline]
    readonly_fields = (
        "plan", "channel", "event", "severity", "dedup_key", "message", "status", "attempts",
        "next_attempt_at", "last_error", "repeats", "last_seen_at", "created_at", "delivered_at",
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
