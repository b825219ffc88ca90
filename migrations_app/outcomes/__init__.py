"""Outcomes: what SDKs report (outcomes, feedback), checked, stored once, rolled up into the
window and stage aggregates the statistics read, counted for /metrics, and purged."""
