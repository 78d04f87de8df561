"""Headless Chromium (Debian's, never a downloaded one) driven by Playwright, for UI tests.

    with launch_chromium() as browser:
        with BrowserPages(browser, shots_dir) as pages:
            page = pages.new_page(edge.url)      # logged in on the login page as the admin
            anonymous = pages.new_page(edge.url, login=False)
            ...
            pages.failed = True                  # → screenshots of every open page

Browsers log in the way a person does: the login form, then the session cookie
alone (never Basic credentials).

Playwright's sync API keeps an asyncio loop marked as running on this thread for
as long as it is started, so ``asyncio.run`` cannot be called meanwhile: read the
edge's state with ``EdgeServer.run`` and stop edges with :func:`serve_edge`.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Response,
    ViewportSize,
    WebSocket,
    sync_playwright,
)

from infra.interfaces import ContainerState
from infra.net import free_port
from infra.settings import Settings
from tests.support.edge import ADMIN_PASSWORD, EdgeServer, make_settings
from tests.support.fake_model import FakeModelServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
VIEWPORT: ViewportSize = {"width": 1400, "height": 900}


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright. Each launch gets a fresh temporary profile
    (Playwright's own user-data dir, removed on close); fails clearly when Chromium
    is missing. Never runs ``playwright install``."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make setup-test` "
                    "(apt-get install chromium); the UI tests never download a browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            yield browser
        finally:
            browser.close()


class BrowserPages:
    """Browser contexts (each a separate cookie jar) against one edge, closed together.

    Set ``failed`` before leaving to save a screenshot of every open page to
    ``shots_dir`` (the test's tmp dir): a failing UI test then shows what the user saw.
    """

    def __init__(self, browser: Browser, shots_dir: Path) -> None:
        self.browser = browser
        self.shots_dir = shots_dir
        self.contexts: list[BrowserContext] = []
        self.failed = False
        self.screenshots: list[Path] = []
        # Every answer the pages got, to print when a test fails.
        self.log: list[str] = []
        self._started = time.monotonic()

    def new_context(self, base_url: str, self_signed: bool = False) -> BrowserContext:
        """A fresh context (no cookies, no storage) whose relative URLs go to ``base_url``
        (``self_signed``: which serves a self-signed certificate, to be accepted)."""
        context = self.browser.new_context(base_url=base_url, viewport=VIEWPORT,
                                           ignore_https_errors=self_signed)
        context.on("response", self._logged)
        context.on("requestfailed", lambda r: self._note(f"{r.method} {r.url} FAILED {r.failure}"))
        self.contexts.append(context)
        return context

    def _note(self, line: str) -> None:
        self.log.append(f"{time.monotonic() - self._started:7.2f} {line}")

    def _logged(self, response: Response) -> None:
        self._note(f"{response.request.method} {response.url} {response.status}")

    def new_page(self, base_url: str, login: bool = True, self_signed: bool = False) -> Page:
        """A page in a fresh context; with ``login`` logged in as the admin on the login
        page (landing on the health check, which never wakes the container)."""
        page = self.new_context(base_url, self_signed).new_page()
        if login:
            log_in(page)
        return page

    def save_screenshots(self) -> list[Path]:
        saved = []
        for c, context in enumerate(self.contexts):
            for p, page in enumerate(context.pages):
                path = self.shots_dir / f"failure-context{c}-page{p}.png"
                try:
                    page.screenshot(path=str(path), full_page=True, timeout=10_000)
                except Exception as exc:  # the page may be the reason the test failed
                    print(f"could not screenshot {page.url}: {exc}")
                    continue
                print(f"screenshot of {page.url}: {path}")
                saved.append(path)
        return saved

    def close(self) -> None:
        if self.failed:
            self.screenshots = self.save_screenshots()
            print("what the pages asked and got (seconds since the test began):")
            print("\n".join(self.log[-150:]))
        for context in self.contexts:
            context.close()
        self.contexts.clear()

    def __enter__(self) -> BrowserPages:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.failed = self.failed or kind is not None
        self.close()


def fill_login_form(page: Page, password: str = ADMIN_PASSWORD, code: str | None = None,
                    user: str = "admin") -> None:
    """Type into the login page's form as a person does, and submit it."""
    page.get_by_label("User").fill(user)
    page.get_by_label("Password").fill(password)
    if code is not None:
        page.get_by_label("One-time code").fill(code)
    page.get_by_role("button", name="Log in").click()


def log_in(page: Page, password: str = ADMIN_PASSWORD, code: str | None = None,
           next_path: str = "/_edge/health") -> None:
    """Log in on the login page and wait to land on ``next_path``."""
    page.goto(f"/_edge/login?next={quote(next_path, safe='')}")
    fill_login_form(page, password, code)
    page.wait_for_url(re.compile(re.escape(next_path) + "$"), timeout=30_000)


def landed_already(page: Page, url: str) -> None:
    """Mark the page's browser as having landed in the workspace once (edge/landing.py),
    so that opening ``/`` shows opencode's own home page, as it does from then on."""
    host = urlsplit(url).hostname or "127.0.0.1"
    page.context.add_cookies([{"name": "ocedge_landed", "value": "1", "domain": host, "path": "/"}])


def session_cookies(page: Page) -> list[str]:
    """The values of the edge's session cookie(s) the page's browser holds."""
    return [c["value"] for c in page.context.cookies()
            if c["name"] in ("ocedge_session", "__Host-ocedge_session") and c["value"]]


@contextmanager
def foreign_site(html: str) -> Iterator[str]:
    """A page served from another port of 127.0.0.1 (the same *site* as the edge, another
    origin): what an attacker's local server, or any other local web app, could serve."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- the edge under a running Playwright -----------------------------------------------


def ui_settings(state_dir: Path, fake_model: FakeModelServer, workspace_name: str = "workspace",
                **overrides: Any) -> Settings:
    """An edge's settings with opencode on the fake model. HOME is the state directory,
    so the workspace is a folder in it, where the UI's folder picker first looks.

    The workspace is already a git repository: for a plain folder the UI runs
    `git init` at its own pace and opencode reloads the project; a prompt sent
    meanwhile was seen "Interrupted" (opencode's doing, not the edge's)."""
    workspace = state_dir / workspace_name
    workspace.mkdir(parents=True)
    subprocess.run(["git", "init", "--quiet", str(workspace)], check=True)
    settings = make_settings(state_dir, model_url=fake_model.base_url,
                             workspace_dir=workspace, **overrides)
    return settings.with_overrides(system_env={**settings.system_env, "HOME": str(state_dir)})


@contextmanager
def serve_edge(settings: Settings) -> Iterator[EdgeServer]:
    """``running_edge`` for tests that hold a browser open: ``EdgeServer.stop`` uses
    ``asyncio.run``, which Playwright's loop forbids on this thread, so stop it on
    another one. The container's HOME exists, as a real user's does (opencode's folder
    picker answers 500 for a HOME that does not exist)."""
    Path(settings.system_env.get("HOME", settings.state_dir / "home")).mkdir(
        parents=True, exist_ok=True)
    server = EdgeServer(settings).start()
    try:
        yield server
    finally:
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        stopper.join(timeout=60)


def container_state(edge: EdgeServer) -> ContainerState:
    """The state item as the edge's store has it now."""
    state: ContainerState = edge.run(edge.edge.backends.state.get())
    return state


# -- the opencode UI ---------------------------------------------------------------------


def open_workspace_project(page: Page, workspace: Path) -> None:
    """On the opencode home page, add the workspace as a project the way a user does:
    "Add project", search the home folder for it, pick it. (Typing a full path makes
    opencode boot an instance for every directory on the way, seconds each.)"""
    page.get_by_role("button", name="Add project").first.click()
    page.get_by_placeholder("Search folders").fill(workspace.name)
    page.locator(f'[data-slot="list-item"][data-key="{workspace}"]').click()
    # The home page now offers the project's sessions (and a "New session" button).
    page.get_by_placeholder(f"Search sessions in {workspace.name}").wait_for()


def send_prompt(page: Page, text: str, timeout: float = 10) -> None:
    """Type ``text`` into the prompt box and press Enter.

    A prompt sent before the session view has loaded its agents is refused with a
    "Select an agent and model" notice and stays in the box: press Enter again then.
    """
    box = page.get_by_role("textbox", name="Prompt")
    box.click()
    box.press_sequentially(text)
    box.press("Enter")
    refused = page.get_by_text("Select an agent and model")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        if text not in box.inner_text():
            return  # sent: the box is cleared
        if refused.count():
            page.wait_for_timeout(750)
            if text in box.inner_text():
                box.press("Enter")
    raise AssertionError(f"the UI did not take the prompt {text!r}: it is still in the box")


class TerminalOutput:
    """What the terminal's WebSocket delivered to the page.

    The opencode terminal (ghostty-web) draws on a canvas, so its text is not in the
    DOM; the bytes the page received on /pty/{id}/connect are exactly what it draws.
    """

    def __init__(self, page: Page) -> None:
        self.sockets: list[WebSocket] = []
        self._text: list[str] = []
        # Playwright calls these handlers on this thread, while the test waits on the page.
        page.on("websocket", self._opened)

    def _opened(self, socket: WebSocket) -> None:
        if re.search(r"/pty/[^/]+/connect", socket.url):
            self.sockets.append(socket)
            socket.on("framereceived", self._received)

    def _received(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            if payload[:1] == b"\x00":  # opencode's control frames (cursor position)
                return
            payload = payload.decode("utf-8", "replace")
        self._text.append(payload)

    @property
    def text(self) -> str:
        return "".join(self._text)

    def wait_for(self, page: Page, pattern: str, timeout: float = 15) -> str:
        """Wait (letting the page's events run) until ``pattern`` has arrived."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            if time.monotonic() > deadline:
                raise AssertionError(f"the terminal never showed {pattern!r}; it got "
                                     f"{self.text[-500:]!r}")
            page.wait_for_timeout(100)
        return self.text


def wait_until(page: Page, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` while the page keeps running (its own events are dispatched)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        page.wait_for_timeout(200)
