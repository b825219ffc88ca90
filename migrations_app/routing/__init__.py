"""Routing: the snapshot SDKs evaluate (snapshots.py) and how a routing change committed to
the database reaches every process and SDK (changes.py)."""
