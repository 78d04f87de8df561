"""The browser fixtures every Chromium test here shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.support.browser import BrowserPages, launch_chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module-scoped, not session-scoped: while Playwright runs, asyncio.run() cannot be
    # called on this thread, and other modules' fixtures call it. A fresh profile,
    # removed on close.
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def pages(browser: Browser, request: pytest.FixtureRequest,
          tmp_path: Path) -> Iterator[BrowserPages]:
    """Browser contexts for one test; screenshots land in its tmp dir if it fails."""
    failed_before = request.session.testsfailed
    with BrowserPages(browser, tmp_path) as opened:
        yield opened
        # The call phase's report is in before fixtures are torn down.
        opened.failed = request.session.testsfailed > failed_before
