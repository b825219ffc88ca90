"""Regenerates the examples in ``migrations_app/alerts/README.md`` from the snapshots.

``python -m tests.alerts.readme`` rewrites the generated blocks; ``test_readme`` fails
when the README and the snapshots (or the webhook docstring's snippet) disagree.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from migrations_app.alerts import webhook

from .conftest import SNAPSHOTS

README = Path(webhook.__file__).with_name("README.md")
BLOCK = re.compile(r"(<!-- generated:(\w+) -->\n).*?(<!-- /generated:\2 -->)", re.S)

EXAMPLES = [
    ("Slack: rolled back", "slack_rolled_back.http", "http"),
    ("Slack: cannot evaluate (no guardrail verdict)", "slack_cannot_evaluate.http", "http"),
    ("PagerDuty: trigger", "pagerduty_trigger.http", "http"),
    ("PagerDuty: resolve (same `dedup_key`)", "pagerduty_resolve.http", "http"),
    ("Webhook: rolled back, signed", "webhook_rolled_back.http", "http"),
    (
        "Email: subject `[Turnout] support-chat rolled back: error_rate regressed`, text part (also Slack's `text` fallback, mrkdwn-escaped there)",
        "text_rolled_back.txt",
        "text",
    ),
    ("Email: HTML part", "email_rolled_back.html", "html"),
]


def verification_snippet() -> str:
    doc = webhook.__doc__ or ""
    start = doc.index("    import hashlib")
    end = doc.index("\nIn a Django view")
    return textwrap.dedent(doc[start:end]).strip() + "\n"


def generated() -> dict[str, str]:
    examples = []
    for title, name, language in EXAMPLES:
        text = (SNAPSHOTS / name).read_text(encoding="utf-8").rstrip("\n")
        examples.append(
            f"### {title}\n\nFrom `tests/alerts/snapshots/{name}`.\n\n```{language}\n{text}\n```\n"
        )
    return {
        "examples": "\n".join(examples),
        "verify": f"```python\n{verification_snippet()}```\n",
    }


def render(current: str) -> str:
    blocks = generated()
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group(2)] + m.group(3), current)


if __name__ == "__main__":
    README.write_text(render(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {README}")
