"""The provider simulator for the replay tests (the providers' fixtures, shared)."""

from tests.providers.conftest import sim, simulator  # noqa: F401
