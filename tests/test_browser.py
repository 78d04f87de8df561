"""The real opencode web UI in headless Chromium, through the edge: login, prompts, the
terminal, an open tab that lets the workspace sleep, waking it, and the waking page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Response, expect
from playwright.sync_api import Error as PlaywrightError

from tests.support.browser import (
    BrowserPages,
    TerminalOutput,
    container_state,
    launch_chromium,
    open_workspace_project,
    send_prompt,
    serve_edge,
    wait_until,
)
from tests.support.edge import EdgeServer, make_settings
from tests.support.fake_model import FakeModelServer, reply_for

pytestmark = pytest.mark.browser

# Generous for a container start (opencode is up in a few seconds here).
START = 60_000
IDLE_TIMEOUT = 8.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module-scoped, not session-scoped: while Playwright runs, asyncio.run() cannot be
    # called on this thread, and other modules' fixtures call it.
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


def _state_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    path = tmp_path_factory.mktemp(name) / "state"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def ui_edge(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
            fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    """An edge in front of the real opencode (woken by the first navigation, which it
    holds until opencode runs), with the fake model."""
    settings = make_settings(_state_dir(tmp_path_factory, "ui"), model_url=fake_model.base_url,
                             wake_wait=60)
    with serve_edge(settings) as server:
        yield server


@pytest.fixture
def sleepy_edge(tmp_path: Path, opencode_bin: str,
                fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    """An edge whose container sleeps after a short idle time; a request that wakes it
    is held until it runs."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    settings = make_settings(state_dir, model_url=fake_model.base_url,
                             idle_timeout=IDLE_TIMEOUT, wake_wait=60)
    with serve_edge(settings) as server:
        yield server


def _workspace(page: Page) -> Path:
    """The directory opencode serves (the workspace), as opencode itself reports it."""
    answer = page.request.get("/path")
    assert answer.ok, answer.text()
    return Path(answer.json()["directory"])


def _open_ui(page: Page) -> Response:
    response = page.goto("/", timeout=START)
    assert response is not None
    assert response.status == 200, f"the UI answered {response.status}: {response.text()[:300]}"
    # The opencode home page: its session search box and its own navigation.
    expect(page.get_by_placeholder("Search sessions")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name="Home")).to_be_visible()
    return response


def _start_session(page: Page, prompt: str) -> None:
    """From the home page: add the workspace as a project, start a session, send
    ``prompt``, and wait for the fake model's reply on the page."""
    open_workspace_project(page, _workspace(page))
    page.get_by_role("button", name="New session").last.click()
    send_prompt(page, prompt)
    expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)


# -- 1. the local edge -------------------------------------------------------------------


def test_without_credentials_the_browser_is_asked_to_log_in(ui_edge: EdgeServer,
                                                             pages: BrowserPages) -> None:
    page = pages.new_page(ui_edge.url, login=False)
    response = page.goto("/")
    assert response is not None and response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    expect(page.get_by_role("heading", name="Log in to opencode-edge")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "ocedge_session"]

    # Wrong credentials: the edge refuses them again, so Chromium gives up on them.
    wrong = pages.new_page(ui_edge.url, password="not-the-password")
    with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
        wrong.goto("/")
    assert not [c for c in wrong.context.cookies() if c["name"] == "ocedge_session"]
    # Nobody got in, so nothing was woken.
    assert ui_edge.edge.backends.compute.launches() == 0  # type: ignore[attr-defined]


def test_the_opencode_ui_works_through_the_edge(ui_edge: EdgeServer,
                                                pages: BrowserPages) -> None:
    page = pages.new_page(ui_edge.url)
    terminal = TerminalOutput(page)
    _open_ui(page)

    cookies = {c["name"]: c for c in page.context.cookies()}
    assert "ocedge_session" in cookies, "the browser got no session cookie after Basic login"
    assert cookies["ocedge_session"]["httpOnly"] is True
    assert cookies["ocedge_session"]["sameSite"] == "Lax"

    prompt = "hello from a browser through the edge"
    _start_session(page, prompt)

    # The terminal panel (opencode's Ctrl+` toggle) runs a shell in the workspace.
    page.keyboard.press("Control+Backquote")
    expect(page.get_by_role("textbox", name="Terminal input").first).to_be_visible(
        timeout=15_000)
    wait_until(page, lambda: bool(terminal.sockets), 15, "the terminal's WebSocket")
    # The shell's prompt shows once the socket is connected.
    terminal.wait_for(page, r"[#$] ", timeout=15)
    page.keyboard.type("echo edge-$((6*7))\n")
    output = terminal.wait_for(page, r"edge-42\r?\n")
    assert "echo edge-$((6*7))" in output  # the typed line was echoed back, then its output
    assert all(not socket.is_closed() for socket in terminal.sockets)


# -- 2. sleep and wake with the UI open -----------------------------------------------------


def _record_answers(page: Page) -> list[tuple[float, str, int]]:
    answers: list[tuple[float, str, int]] = []
    page.on("response", lambda r: answers.append((time.monotonic(), r.url, r.status)))
    return answers


def _sleep_with_the_page_open(page: Page, edge: EdgeServer) -> int:
    """Leave ``page`` alone until the container sleeps and for a while after; check
    that its polls and reconnects neither keep it awake nor wake it. Returns the
    launch count."""
    compute = edge.edge.backends.compute
    launches = compute.launches()  # type: ignore[attr-defined]
    answers = _record_answers(page)
    left = time.monotonic()
    wait_until(page, lambda: container_state(edge).status == "stopped", IDLE_TIMEOUT + 15,
               "the container to sleep with the UI open")
    slept = time.monotonic() - left
    assert slept >= IDLE_TIMEOUT * 0.5, f"the container slept after only {slept:.1f} s"

    asleep_since = time.monotonic()
    page.wait_for_timeout(15_000)
    assert container_state(edge).status == "stopped", "the open page woke the container"
    assert compute.launches() == launches, "the open page started the container again"  # type: ignore[attr-defined]
    # The page really did keep calling the edge meanwhile, and was told it sleeps.
    refused = [(url, status) for at, url, status in answers
               if at > asleep_since and status == 503]
    assert refused, f"the page made no requests while the container slept: {answers[-5:]}"
    return int(launches)


def test_an_idle_open_ui_lets_the_container_sleep_and_a_reload_wakes_it(
        sleepy_edge: EdgeServer, pages: BrowserPages) -> None:
    page = pages.new_page(sleepy_edge.url)
    _open_ui(page)
    prompt = "remember this session across a sleep"
    _start_session(page, prompt)
    title = "FAKE-TITLE: remember this session"
    expect(page.get_by_text(title).first).to_be_visible(timeout=15_000)

    launches = _sleep_with_the_page_open(page, sleepy_edge)

    # A reload is a navigation: it wakes the container and is held until it runs.
    response = page.reload(timeout=START)
    assert response is not None and response.status == 200
    assert container_state(sleepy_edge).status == "running"
    assert sleepy_edge.edge.backends.compute.launches() == launches + 1  # type: ignore[attr-defined]
    # The UI is back with the conversation from before the sleep.
    expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)
    # And the home page still lists that session.
    page.get_by_role("button", name="Home").click()
    expect(page.get_by_text(title).first).to_be_visible(timeout=15_000)


def test_a_prompt_from_an_open_page_wakes_the_sleeping_container(
        sleepy_edge: EdgeServer, pages: BrowserPages) -> None:
    page = pages.new_page(sleepy_edge.url)
    _open_ui(page)
    _start_session(page, "first prompt before the sleep")

    launches = _sleep_with_the_page_open(page, sleepy_edge)

    # Sending a prompt is a POST: it wakes the container and waits for it.
    prompt = "second prompt wakes the workspace"
    with page.expect_response(lambda r: r.request.method == "POST" and "/prompt" in r.url,
                              timeout=START) as posted:
        send_prompt(page, prompt)
    assert posted.value.status < 300, f"the prompt got {posted.value.status}"
    assert sleepy_edge.edge.backends.compute.launches() == launches + 1  # type: ignore[attr-defined]
    assert container_state(sleepy_edge).status == "running"
    # The page reconnects its event stream by itself and shows the reply.
    expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=45_000)


# -- 3. and 4. the waking page ----------------------------------------------------------------


def _elapsed_seconds(page: Page) -> int:
    text = page.get_by_text(re.compile(r"Status: .+ · \d+ s")).inner_text()
    match = re.search(r"(\d+) s", text)
    assert match, text
    return int(match.group(1))


def test_a_sleeping_workspace_shows_the_waking_page_then_the_ui(
        tmp_path: Path, opencode_bin: str, fake_model: FakeModelServer,
        pages: BrowserPages) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    settings = make_settings(state_dir, model_url=fake_model.base_url, wake_wait=0.5)
    with serve_edge(settings) as edge:
        assert container_state(edge).status == "stopped"
        page = pages.new_page(edge.url)
        response = page.goto("/")
        assert response is not None and response.status == 503
        expect(page).to_have_title(re.compile("Starting your workspace"))
        expect(page.get_by_role("heading", name="Starting your workspace")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Status: (starting|stopped)"))).to_be_visible()
        # The elapsed time counts up while it waits.
        wait_until(page, lambda: _elapsed_seconds(page) >= 1, 10, "the elapsed time to count")
        expect(page.get_by_text("Status: starting")).to_be_visible(timeout=10_000)

        # It reloads by itself once the container runs: the opencode UI, same address.
        expect(page.get_by_placeholder("Search sessions")).to_be_visible(timeout=START)
        expect(page.get_by_role("heading", name="Starting your workspace")).to_have_count(0)
        assert page.url.rstrip("/") == edge.url
        assert container_state(edge).status == "running"
        assert edge.edge.backends.compute.launches() == 1  # type: ignore[attr-defined]


def test_a_failed_start_shows_why_on_the_waking_page(
        tmp_path: Path, fake_model: FakeModelServer, pages: BrowserPages) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    missing = tmp_path / "nope"
    settings = make_settings(state_dir, model_url=fake_model.base_url, wake_wait=0.5,
                             opencode_bin=str(missing))
    with serve_edge(settings) as edge:
        page = pages.new_page(edge.url)
        response = page.goto("/")
        assert response is not None and response.status == 503

        failed = page.get_by_role("alert")
        expect(failed.get_by_role("heading", name="The workspace could not start")).to_be_visible(
            timeout=30_000)
        expect(failed).to_contain_text("opencode binary was not found")
        expect(failed).to_contain_text(str(missing))
        expect(failed.get_by_role("button", name="Try again")).to_be_visible()
        expect(page.get_by_role("heading", name="Starting your workspace")).to_be_hidden()
        assert container_state(edge).status == "failed"
