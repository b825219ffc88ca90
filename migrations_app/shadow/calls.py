"""The candidate's production call for a shadow sample, through the SDK's provider adapters,
inside the provider's shared call limits (``provider_limits``) and the secret policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from django.conf import settings
from turnout import providers
from turnout.providers import Provider
from turnout.providers.params import sample_param_problems
from turnout.routing import ArmSpec

from migrations_app import secret_policy
from migrations_app.models import (
    MigrationPlan,
    ModelSpec,
    ShadowSample,
)
from migrations_app.routing.snapshots import arm_spec
from migrations_app.shadow import provider_limits
from migrations_app.shadow.pipeline import CandidateResult, NotCalled, Refused

T = TypeVar("T")

# One adapter per arm per worker process, shared by a task's threads (and kept with its
# connection pool). Arms are few and change only with a plan's routing, so nothing is evicted:
# an evicted adapter would be closed under a call still using it.
_adapters = providers.Adapters()


def candidate_spec(plan: MigrationPlan) -> ArmSpec:
    """The plan's candidate arm exactly as its snapshot gives it to the SDKs (the same model,
    base URL, key variable, params and prompt adjustment)."""
    return arm_spec(
        plan.candidate_model,
        plan.candidate_params,
        plan.candidate_prompt_mode,
        plan.candidate_prompt_text,
    )


def _limit(model: ModelSpec) -> provider_limits.Limit:
    connection = model.provider
    return provider_limits.Limit(
        connection.name, connection.max_concurrent_calls, connection.max_calls_per_second
    )


def control_spec(plan: MigrationPlan) -> ArmSpec:
    """The plan's control arm as its snapshot gives it to the SDKs (a replay's fresh baseline)."""
    return arm_spec(
        plan.control_model, plan.control_params, plan.control_prompt_mode, plan.control_prompt_text
    )


def plan_param_problems(
    plan: MigrationPlan, params: Mapping[str, Any], arm: str = "candidate"
) -> list[tuple[str, str, str]]:
    """The sample params the plan's arm (the candidate unless said) may not be called with
    (see turnout.providers.params: only sampling controls, checked for the arm's kind)."""
    model = plan.candidate_model if arm == "candidate" else plan.control_model
    arm_params = plan.candidate_params if arm == "candidate" else plan.control_params
    return sample_param_problems(model.provider.kind, arm_params or {}, params)


@lru_cache(maxsize=256)
def _policy_problems(api_key_env: str, base_url: str, *policy: Any) -> dict[str, str]:
    # ``policy``: the settings the answer depends on, so that a change (a test's override)
    # is another key. Read only: the dict is shared.
    return secret_policy.connection_problems(api_key_env=api_key_env, base_url=base_url)


def connection_problems(connection: Any) -> dict[str, str]:
    """``secret_policy.connection_problems`` of the connection's row, remembered per process:
    it parses the URL and its host (ipaddress, httpx) on every call, 5 % of a replay worker's
    CPU in bench_replay, for an answer that changes only with the row or the settings."""
    policy = (
        settings.TURNOUT_PROVIDER_KEY_VARS,
        settings.TURNOUT_RESERVED_VARS,
        settings.TURNOUT_PROVIDER_HOST_RULES,
    )
    try:
        return _policy_problems(connection.api_key_env, connection.base_url, *policy)
    except TypeError:  # settings overridden with lists: not a key, check without the memo
        return secret_policy.connection_problems(
            api_key_env=connection.api_key_env, base_url=connection.base_url
        )


def with_provider(model: ModelSpec, spec: ArmSpec, use: Callable[[Provider], T]) -> T:
    """``use(adapter)`` inside the provider's shared call limits. Raises :class:`NotCalled`
    when no slot came free in time or the adapter cannot be built (no key in this process),
    or when the provider's connection is one the secret policy refuses (checked on the row
    as it is now: the snapshot's arm may be older)."""
    connection = model.provider
    if problems := connection_problems(connection):
        reason = f"provider {connection.name} refused: {secret_policy.summary(problems)}"
        raise NotCalled(reason, retry=False)
    try:
        provider, _ = _adapters.get(spec)  # the cache is never closed: it keeps the adapter
    except providers.ProviderError as exc:
        raise NotCalled(f"cannot call {spec.model}: {exc.message}", retry=False) from exc
    lease = settings.TURNOUT_SHADOW_LEASE_SECONDS
    try:
        with provider_limits.provider_slot(_limit(model), lease=lease, wait=lease / 4):
            return use(provider)
    except provider_limits.SlotTimeout as exc:
        raise NotCalled(str(exc), retry=True) from exc


def provider_call(sample: ShadowSample) -> CandidateResult:
    """Call the plan's candidate arm through the provider adapters, as ``client.complete``
    would (the arm's params and prompt adjustment applied by the adapter)."""
    return arm_call(sample.plan, "candidate", sample.request)


def arm_call(plan: MigrationPlan, arm: str, stored: Mapping[str, Any]) -> CandidateResult:
    """Call the plan's ``arm`` (candidate or control) with a stored application request
    (``{"messages", "params", "json_schema"}``: a shadow sample's, a dataset item's)."""
    model = plan.candidate_model if arm == "candidate" else plan.control_model
    spec = candidate_spec(plan) if arm == "candidate" else control_spec(plan)
    params = stored.get("params") or {}
    if not isinstance(params, Mapping):
        raise Refused("request.params is not an object")
    # Checked at ingest too; a sample stored before that check must not reach the vendor SDK.
    for name, _, message in plan_param_problems(plan, params, arm):
        raise Refused(f"request.params.{name}: {message}")
    # The application's max_tokens, at most what the arm's model can write.
    if "max_tokens" in params:
        params = {**params, "max_tokens": min(params["max_tokens"], model.max_output_tokens)}
    request = providers.Request(
        messages=stored["messages"],
        params=params,
        json_schema=stored.get("json_schema"),
        timeout=settings.TURNOUT_SHADOW_CALL_TIMEOUT,
    )
    result = with_provider(model, spec, lambda provider: provider.complete(request))
    return CandidateResult(
        text=result.text,
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        error=result.error,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        finish_reason=result.finish_reason,
    )
