"""Provider adapters: one normalised request and result over the vendors' own SDKs.

Build one from a plan's arm with :func:`provider_for`, then call :meth:`Provider.complete`.
The vendor modules are imported on first use (their SDKs are the ``providers`` extra).
"""

from turnout.contract import ERROR_KINDS, TRANSIENT_KINDS
from turnout.providers.base import (
    DEFAULT_RETRY,
    NO_RETRY,
    REGISTRY,
    Adapters,
    Answer,
    Provider,
    ProviderError,
    Request,
    Result,
    RetryPolicy,
    provider_class,
    provider_for,
    register,
)

__all__ = [
    "DEFAULT_RETRY",
    "ERROR_KINDS",
    "NO_RETRY",
    "REGISTRY",
    "TRANSIENT_KINDS",
    "Adapters",
    "Answer",
    "Provider",
    "ProviderError",
    "Request",
    "Result",
    "RetryPolicy",
    "provider_class",
    "provider_for",
    "register",
]
