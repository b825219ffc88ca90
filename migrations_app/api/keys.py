"""SDK API keys: created once (the plaintext is returned, never stored), checked per request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from migrations_app.errors import ValidationFailed
from migrations_app.models import ApiKey, ApiKeyScope, MigrationPlan

KEY_PREFIX = "tk_"
# last_used_at is a hint for humans; writing it on every request would put a row write on the hot path.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


NO_PLAN = "Choose the plans this key sees, or tick 'every plan'."


def apikey_create(
    *, name: str, scopes: Iterable[str], plans: Iterable[MigrationPlan] | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext key, which is shown once and not kept.

    ``plans=None``: the key sees every plan, present and future. A list: only those plans,
    at least one (a key that sees nothing is a mistake; one whose plans were all deleted
    since sees none, never all).
    """
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in ApiKeyScope.values]
    if unknown or not scope_list:
        raise ValidationFailed(
            "Choose at least one known scope.",
            details={"fields": {"scopes": [f"Known scopes: {', '.join(ApiKeyScope.values)}."]}},
        )
    plan_list = None if plans is None else list(plans)
    if plan_list is not None and not plan_list:
        raise ValidationFailed(NO_PLAN, details={"fields": {"plans": [NO_PLAN]}})
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    plaintext = f"{KEY_PREFIX}{prefix}_{secret}"
    with transaction.atomic():
        key = ApiKey.objects.create(
            name=name,
            prefix=prefix,
            hashed_secret=_hash(plaintext),
            scopes=scope_list,
            all_plans=plan_list is None,
        )
        if plan_list:
            key.plans.set(plan_list)
    return key, plaintext


def apikey_plan_ids(key: ApiKey) -> frozenset[int] | None:
    """The plans a key sees: None for every plan, else its list (empty once its plans are
    all deleted: it then sees none)."""
    if key.all_plans:
        return None
    return frozenset(key.plans.values_list("pk", flat=True))


def apikey_authenticate(raw: str) -> ApiKey | None:
    """The live key matching ``raw``, or None. Constant-time comparison of the hashes."""
    if not raw.startswith(KEY_PREFIX) or raw.count("_") < 2:
        return None
    prefix = raw[len(KEY_PREFIX) :].split("_", 1)[0]
    key = ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.hashed_secret, _hash(raw)):
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
