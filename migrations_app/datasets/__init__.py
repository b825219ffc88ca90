"""Replay datasets: immutable, versioned lists of requests made from a plan's shadow samples,
an uploaded JSONL file or the API (validation, jsonl, services, selectors, retention)."""
