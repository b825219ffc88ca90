from __future__ import annotations

from .readme import README, render


def test_readme_examples_match_the_snapshots() -> None:
    current = README.read_text(encoding="utf-8")
    assert "<!-- generated:examples -->" in current and "<!-- generated:verify -->" in current
    assert render(current) == current, "README is stale: run python -m tests.alerts.readme"
