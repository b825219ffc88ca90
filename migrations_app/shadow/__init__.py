"""Shadow mode: the candidate answers a sample of production requests in the background.

samples.py stores what the SDK posts (redacted: redaction.py) and enqueues it; the task
(tasks.py) runs pipeline.py, which claims samples with leases (claims.py) within the plan's
daily budget (budget.py), calls the candidate many at a time (calls.py, within the provider's
shared limits: provider_limits.py), compares the answers (judge.py) and rolls the result into
the aggregates; retention.py deletes old samples; selectors.py reads pairs back.
"""
