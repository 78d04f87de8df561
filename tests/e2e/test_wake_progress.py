"""Wake progress on the waking page, in headless Chromium: the steps of a real start
(the S3 workspace mounted from moto and its sessions restored, then opencode) appear
in order while it goes on, then the UI (landed in the workspace); a start that fails
shows the failing step and its reason."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from infra.lifecycle import STEP_REQUESTED
from infra.progress import STEP_OPENCODE, STEP_WORKSPACE
from infra.settings import Settings
from tests.support.browser import BrowserPages, container_state, serve_edge
from tests.support.edge import make_settings
from tests.support.fake_model import FakeModelServer
from tests.support.s3 import CREDENTIALS, MotoServer, moto_server

pytestmark = pytest.mark.browser

START_MS = 90_000


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def _settings(state_dir: Path, fake_model: FakeModelServer, **overrides: object) -> Settings:
    settings = make_settings(state_dir, model_url=fake_model.base_url, wake_wait=0.0)
    system_env = {**settings.system_env, **CREDENTIALS, "HOME": str(state_dir)}
    return settings.with_overrides(system_env=system_env, **overrides)


def _shown_steps(page: Page) -> list[str]:
    """The steps the page lists now, by name (each item is "<step> — <n> s …")."""
    return [text.split(" — ")[0] for text in page.locator("#steps li").all_inner_texts()]


def test_the_waking_page_shows_the_steps_of_a_start_in_order_then_the_ui(
        tmp_path: Path, opencode_bin: str, fake_model: FakeModelServer, moto: MotoServer,
        pages: BrowserPages) -> None:
    bucket = moto.create_bucket(f"wp-{uuid.uuid4().hex[:12]}")
    settings = _settings(tmp_path / "state", fake_model, workspace="s3", s3_bucket=bucket,
                         s3_prefix="workspace", s3_endpoint=moto.endpoint)
    with serve_edge(settings) as edge:
        page = pages.new_page(edge.url)
        response = page.goto("/")
        assert response is not None and response.status == 503
        # The current step is announced in a polite live region.
        live = page.locator("#step")
        assert live.get_attribute("aria-live") == "polite"
        assert live.get_attribute("role") == "status"

        announced: list[str] = []  # the current step, each time it changed
        listed: list[str] = []  # the longest list of steps seen before the UI
        sizes: set[int] = set()
        # The UI, landed in the workspace (edge/landing.py), ready to prompt.
        ui = page.get_by_role("textbox", name="Prompt")
        deadline = time.monotonic() + START_MS / 1000
        while time.monotonic() < deadline:
            if ui.count():
                break
            try:
                now, steps = live.inner_text(timeout=1000), _shown_steps(page)
            except Exception:  # the page reloads itself into the UI meanwhile
                page.wait_for_timeout(100)
                continue
            if now and (not announced or announced[-1] != now):
                announced.append(now)
            sizes.add(len(steps))
            if len(steps) > len(listed):
                assert steps[:len(listed)] == listed, (listed, steps)  # only ever appended
                listed = steps
            page.wait_for_timeout(100)
        expect(ui).to_be_visible(timeout=START_MS)
        assert container_state(edge).status == "running"

        # At least three distinct steps, in the order they happen, on the page during
        # the wake; the ones announced as current follow that same order.
        assert len(set(listed)) >= 3, listed
        for first, then in [(STEP_REQUESTED, STEP_WORKSPACE), (STEP_WORKSPACE, STEP_OPENCODE)]:
            assert listed.index(first) < listed.index(then), listed
        # Seen live, as they happened: the list grew while the page was watched.
        assert len(sizes) >= 2, (sizes, announced, listed)
        names = [re.sub(r"^Now: (.*)\.$", r"\1", text) for text in announced]
        assert len(names) >= 2, announced
        assert [listed.index(name) for name in names] == sorted(
            listed.index(name) for name in names), (announced, listed)


def test_a_start_that_fails_shows_the_failing_step_and_its_reason(
        tmp_path: Path, fake_model: FakeModelServer, pages: BrowserPages) -> None:
    missing = tmp_path / "nope"
    settings = _settings(tmp_path / "state", fake_model, opencode_bin=str(missing))
    with serve_edge(settings) as edge:
        page = pages.new_page(edge.url)
        page.goto("/")
        expect(page.get_by_role("alert")).to_be_visible(timeout=30_000)
        failed = page.locator("#steps li.failed")
        expect(failed).to_have_count(1)
        expect(failed).to_contain_text(STEP_OPENCODE)
        expect(failed).to_contain_text("opencode binary was not found")
        expect(page.locator("#step")).to_have_text(f"Failed while {STEP_OPENCODE}.")
        # The steps before it are listed as done, in order.
        assert _shown_steps(page)[:2] == [STEP_REQUESTED, "host up, container starting"]
        assert container_state(edge).status == "failed"

        # A fresh navigation renders the same from the server side.
        page.reload()
        expect(page.locator("#steps li.failed")).to_contain_text("opencode binary was not found")
