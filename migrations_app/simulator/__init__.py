"""The provider simulator: one HTTP server speaking OpenAI's, Anthropic's and Gemini's wire
formats, with per-model profiles changeable at run time. Django-free, so that tests, the demo
and the benchmarks can run it in-process or as ``python -m migrations_app.simulator``."""

from migrations_app.simulator.profiles import ANSWERS, SIM_ERRORS, Profile
from migrations_app.simulator.server import DEFAULT, Simulator

__all__ = ["ANSWERS", "DEFAULT", "SIM_ERRORS", "Profile", "Simulator"]
