"""Landing in the workspace: a fresh browser opening the edge's root, logged in on the
login page, lands in the workspace project of the real opencode UI, ready to prompt,
without knowing the server path; opening the root again shows opencode's home page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.browser import (
    BrowserPages,
    fill_login_form,
    send_prompt,
    serve_edge,
    ui_settings,
)
from tests.support.edge import ADMIN_PASSWORD
from tests.support.fake_model import FakeModelServer, reply_for

pytestmark = pytest.mark.browser

START_MS = 60_000


def test_a_fresh_browser_opening_the_root_lands_in_the_workspace_ready_to_prompt(
        tmp_path: Path, opencode_bin: str, fake_model: FakeModelServer,
        pages: BrowserPages) -> None:
    settings = ui_settings(tmp_path / "state", fake_model, "my-project", wake_wait=60)
    workspace = settings.workspace_path
    encoded = base64.urlsafe_b64encode(str(workspace).encode()).decode().rstrip("=")
    with serve_edge(settings) as edge:
        page = pages.new_page(edge.url, login=False)
        page.goto("/")
        expect(page).to_have_url(re.compile(r"/_edge/login\?next=%2F$"))
        fill_login_form(page)
        # Logged in, "/" wakes the container, then lands in the workspace project.
        expect(page).to_have_url(re.compile(rf"/({re.escape(encoded)}|server/[^/]+)/session/ses_"),
                                 timeout=START_MS)
        expect(page.get_by_role("textbox", name="Prompt")).to_be_visible(timeout=30_000)
        prompt = "hello from the landing page"
        send_prompt(page, prompt, timeout=30)
        expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)

        # The session it made is in the workspace, as opencode itself says.
        with httpx.Client(base_url=edge.url, auth=("admin", ADMIN_PASSWORD), timeout=30) as api:
            answer = api.get("/session")
            assert answer.status_code == 200, answer.text
            directories = {session["directory"] for session in answer.json()}
        assert directories == {str(workspace)}, directories

        # Landed once: the root is opencode's home page again for this browser.
        page.goto("/")
        expect(page.get_by_placeholder("Search sessions")).to_be_visible(timeout=30_000)
        assert page.url.rstrip("/") == edge.url
