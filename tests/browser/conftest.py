"""Playwright driving Debian's Chromium (``make system-deps`` installs it; no browser is
downloaded). Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ARTIFACTS

CHROMIUM = Path(os.environ.get("TURNOUT_CHROMIUM", "/usr/bin/chromium"))
SHOTS = ARTIFACTS / "browser"


@pytest.fixture
def browser_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium when run as "
            "root (apt-get install chromium)"
        )
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # (fixtures, the engine) are plain synchronous code all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
