"""Turnout client library: local routing decisions, outcome reporting, provider adapters.

Django-free by design: the control plane imports this package so that the
decision algorithm exists exactly once.
"""

__version__ = "0.1.0"
