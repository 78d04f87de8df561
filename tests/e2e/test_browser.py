"""The real opencode web UI in headless Chromium, through the edge: the login page
(wrong password, two-factor code, landing on the page asked for, logging out), prompts,
the terminal on the session cookie alone, a page on another local port that cannot
act through a logged-in browser, an open tab that lets the workspace sleep, waking
it, and the waking page."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Response, expect

from infra import totp
from infra.admin import disable_totp, enable_totp
from tests.support.browser import (
    BrowserPages,
    TerminalOutput,
    container_state,
    fill_login_form,
    foreign_site,
    landed_already,
    open_workspace_project,
    send_prompt,
    serve_edge,
    session_cookies,
    ui_settings,
    wait_until,
)
from tests.support.edge import ADMIN_PASSWORD, EdgeServer
from tests.support.fake_model import FakeModelServer, reply_for, title_for
from tests.support.lifecycle import launches as launched

pytestmark = pytest.mark.browser

# Generous for a container start (opencode is up in a few seconds here).
START_MS = 60_000
IDLE_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def ui_edge(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
            fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    """An edge in front of the real opencode (woken by the first navigation, which it
    holds until opencode runs), with the fake model."""
    settings = ui_settings(tmp_path_factory.mktemp("ui") / "state", fake_model, wake_wait=60)
    with serve_edge(settings) as server:
        yield server


@pytest.fixture
def sleepy_edge(tmp_path: Path, opencode_bin: str,
                fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    """An edge whose container sleeps after a short idle time; a request that wakes it
    is held until it runs."""
    settings = ui_settings(tmp_path / "state", fake_model, idle_timeout=IDLE_TIMEOUT,
                         wake_wait=60)
    with serve_edge(settings) as server:
        yield server


def _workspace(page: Page) -> Path:
    """The directory opencode serves (the workspace), as opencode itself reports it."""
    answer = page.request.get("/path")
    assert answer.ok, answer.text()
    return Path(answer.json()["directory"])


def _open_ui(page: Page) -> Response:
    landed_already(page, page.url)  # opencode's home page, not the workspace (test_landing)
    response = page.goto("/", timeout=START_MS)
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


# -- 1. logging in ------------------------------------------------------------------------


def test_without_a_session_the_browser_gets_the_login_page_and_lands_where_it_asked(
        ui_edge: EdgeServer, pages: BrowserPages) -> None:
    page = pages.new_page(ui_edge.url, login=False)
    answers = _record_answers(page)
    response = page.goto("/?landing=1")
    assert response is not None and response.status == 200
    assert page.url == f"{ui_edge.url}/_edge/login?next=%2F%3Flanding%3D1"
    expect(page.get_by_role("heading", name="Log in to opencode-edge")).to_be_visible()
    # Never a Basic challenge (a browser would prompt for it, then cache it).
    challenged = [url for _, url, status in answers if status == 401]
    assert challenged == [], challenged
    assert response.request.redirected_from is not None
    assert "www-authenticate" not in response.request.redirected_from.response().headers  # type: ignore[union-attr]
    assert not session_cookies(page)

    # A wrong password: the form again, saying so.
    fill_login_form(page, password="not-the-password")
    expect(page.get_by_role("alert")).to_contain_text("not right")
    expect(page.get_by_label("Password")).to_be_visible()
    assert not session_cookies(page)
    # Nobody got in, so nothing was woken.
    assert launched(ui_edge) == 0

    # The right one: back to the page it asked for, the opencode UI.
    fill_login_form(page)
    page.wait_for_url(f"{ui_edge.url}/?landing=1", timeout=START_MS)
    expect(page.get_by_placeholder("Search sessions")).to_be_visible(timeout=30_000)
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["ocedge_session"]["httpOnly"] is True
    assert cookies["ocedge_session"]["sameSite"] == "Lax"


def test_two_factor_login_takes_a_code_from_the_authenticator(ui_edge: EdgeServer,
                                                              pages: BrowserPages) -> None:
    secret = totp.new_secret()
    backends = ui_edge.edge.backends
    ui_edge.run(enable_totp(backends.keys, backends.session_secret, secret,
                            totp.code_at(secret, time.time() - 30)))
    try:
        page = pages.new_page(ui_edge.url, login=False)
        page.goto("/_edge/login?next=%2F_edge%2Fstatus")
        code = totp.code_at(secret, time.time())
        fill_login_form(page, code=f"{(int(code) + 1) % 1_000_000:06d}")
        expect(page.get_by_role("alert")).to_contain_text("user, password or code is not right")
        assert not session_cookies(page)
        fill_login_form(page, code=totp.code_at(secret, time.time()))
        page.wait_for_url(f"{ui_edge.url}/_edge/status", timeout=30_000)
        assert session_cookies(page)
        assert page.request.get("/_edge/status").ok
    finally:
        ui_edge.run(disable_totp(backends.keys, backends.session_secret, ADMIN_PASSWORD))


def test_logging_out_ends_the_session_and_returns_to_the_login_page(
        ui_edge: EdgeServer, pages: BrowserPages) -> None:
    page = pages.new_page(ui_edge.url)
    old = session_cookies(page)
    assert old and page.request.get("/_edge/status").ok
    page.goto("/_edge/logout")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{ui_edge.url}/_edge/login?logged_out=1")
    expect(page.get_by_role("status")).to_have_text("You have logged out.")
    assert not session_cookies(page)
    page.goto("/")
    expect(page.get_by_role("heading", name="Log in to opencode-edge")).to_be_visible()
    # The cookie's value, replayed by anyone who copied it, is dead too.
    replayed = page.request.get("/_edge/status",
                                headers={"Cookie": f"ocedge_session={old[0]}"})
    assert replayed.status == 401


def _attack_page(edge: EdgeServer) -> str:
    """What a page on another local port tries against the edge with the browser's
    cookie: create an opencode session by fetch (CORS, and no-cors), open the terminal's
    WebSocket, and (when asked) post a form."""
    ws_url = edge.url.replace("http://", "ws://")
    return f"""<!doctype html><html><body>
<form id="form" method="post" action="{edge.url}/session" enctype="text/plain">
<input name='{{"title":"' value='from another port"}}'></form>
<script>
window.results = {{}};
fetch("{edge.url}/session", {{method: "POST", credentials: "include",
  headers: {{"Content-Type": "application/json"}}, body: '{{"title":"by fetch"}}'}})
  .then(r => r.text().then(t => window.results.fetch = "answered " + r.status + " " + t),
        e => window.results.fetch = "failed");
fetch("{edge.url}/session", {{method: "POST", credentials: "include", mode: "no-cors",
  body: '{{"title":"by no-cors"}}'}})
  .then(r => window.results.nocors = "sent", e => window.results.nocors = "failed");
fetch("{edge.url}/session", {{credentials: "include"}})
  .then(r => r.text().then(t => window.results.read = "read " + t), e => window.results.read = "failed");
var ws = new WebSocket("{ws_url}/pty/x/connect");
ws.onopen = function () {{ window.results.ws = "open"; }};
ws.onerror = function () {{ window.results.ws = "failed"; }};
</script></body></html>"""


def test_a_page_on_another_local_port_cannot_act_through_a_logged_in_browser(
        ui_edge: EdgeServer, pages: BrowserPages) -> None:
    page = pages.new_page(ui_edge.url)
    assert session_cookies(page)
    with _api(ui_edge) as client:
        before = client.get("/session").json()
    edge_answers: list[tuple[str, int]] = []
    with foreign_site(_attack_page(ui_edge)) as foreign_url:
        foreign = page.context.new_page()
        foreign.on("response", lambda r: edge_answers.append((r.request.method, r.status))
                   if r.url.startswith(ui_edge.url) else None)
        foreign.goto(foreign_url)
        wait_until(foreign, lambda: len(foreign.evaluate("Object.keys(window.results)")) == 4,
                   15, "the other page's attempts to finish")
        results = foreign.evaluate("window.results")
        with foreign.expect_response(f"{ui_edge.url}/session") as posted:
            foreign.evaluate("document.getElementById('form').submit()")
        form_status = posted.value.status
    assert results["fetch"] == "failed", results  # its preflight was refused: never sent
    assert results["read"] == "failed", results  # nor could it read anything
    assert results["ws"] == "failed", results
    assert form_status == 403
    assert all(status in (403,) for _, status in edge_answers), edge_answers
    with _api(ui_edge) as client:
        after = client.get("/session").json()
    assert [s["id"] for s in after] == [s["id"] for s in before], "a session was created"
    # The browser itself is still logged in and works on the edge's own page.
    assert page.request.get("/_edge/status").ok


def test_the_opencode_ui_works_through_the_edge(ui_edge: EdgeServer,
                                                pages: BrowserPages) -> None:
    page = pages.new_page(ui_edge.url)
    terminal = TerminalOutput(page)
    _open_ui(page)

    # The browser holds the session cookie and nothing else: no Basic credentials.
    assert session_cookies(page)

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
#
# The idle clock only stops for activity (navigations, non-GETs): opening a project in
# the UI's folder picker is all background GETs and takes longer than a short idle
# timeout on a loaded machine. So these tests open a session by its address, which is
# a navigation and quick, after creating it as an API client would.


def _api(edge: EdgeServer) -> httpx.Client:
    """A client of the edge as the opencode CLI or an SDK is: an API key, no browser."""
    key = edge.create_key("browser-test")
    return httpx.Client(base_url=edge.url, headers={"Authorization": f"Bearer {key}"},
                        timeout=START_MS / 1000)


def _new_session(edge: EdgeServer) -> str:
    """A session created through the edge as an API client would."""
    with _api(edge) as client:
        created = client.post("/session", json={})
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def _texts(client: httpx.Client, session_id: str) -> list[str]:
    """The text parts of a session's messages, as an API client reads them."""
    answer = client.get(f"/session/{session_id}/message")
    assert answer.status_code == 200, answer.text
    return [part.get("text", "") for message in answer.json() for part in message["parts"]
            if part.get("type") == "text"]


def _session_url(edge: EdgeServer, session_id: str) -> str:
    """The address the opencode UI shows for a session: /server/<origin, base64url>/session/<id>."""
    server = base64.urlsafe_b64encode(edge.url.encode()).decode().rstrip("=")
    return f"/server/{server}/session/{session_id}"


def _open_session_and_prompt(page: Page, edge: EdgeServer, prompt: str) -> str:
    """Open a new session in the UI, send ``prompt`` from the page, see the reply."""
    session_id = _new_session(edge)
    response = page.goto(_session_url(edge, session_id), timeout=START_MS)
    assert response is not None and response.status == 200
    send_prompt(page, prompt)
    expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)
    return session_id


def _record_answers(page: Page) -> list[tuple[float, str, int]]:
    answers: list[tuple[float, str, int]] = []
    page.on("response", lambda r: answers.append((time.monotonic(), r.url, r.status)))
    return answers


def _sleep_with_the_page_open(page: Page, edge: EdgeServer, observe: float) -> int:
    """Leave ``page`` alone until the container sleeps and ``observe`` seconds more;
    check that its polls and reconnects neither keep it awake nor wake it. Returns
    the launch count."""
    launches = launched(edge)
    answers = _record_answers(page)
    left = time.monotonic()
    wait_until(page, lambda: container_state(edge).status == "stopped", IDLE_TIMEOUT + 15,
               "the container to sleep with the UI open")
    slept = time.monotonic() - left
    assert slept >= IDLE_TIMEOUT * 0.5, f"the container slept after only {slept:.1f} s"

    asleep_since = time.monotonic()
    page.wait_for_timeout(observe * 1000)
    assert container_state(edge).status == "stopped", "the open page woke the container"
    assert launched(edge) == launches, "the open page started the container again"
    # The page really did keep calling the edge meanwhile, and was told it sleeps.
    refused = [url for at, url, status in answers if at > asleep_since and status == 503]
    assert refused, f"the page made no requests while the container slept: {answers[-5:]}"
    return int(launches)


def test_an_idle_open_ui_lets_the_container_sleep_and_a_reload_wakes_it(
        sleepy_edge: EdgeServer, pages: BrowserPages) -> None:
    page = pages.new_page(sleepy_edge.url)
    prompt = "remember this session across a sleep"
    _open_session_and_prompt(page, sleepy_edge, prompt)
    title = title_for(prompt)  # opencode names the session with the fake model
    expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=15_000)

    # The UI polls /api/health every ~10 s and re-opens its event stream by itself.
    launches = _sleep_with_the_page_open(page, sleepy_edge, observe=15)

    # A reload is a navigation: it wakes the container and is held until it runs.
    response = page.reload(timeout=START_MS)
    assert response is not None and response.status == 200
    assert container_state(sleepy_edge).status == "running"
    assert launched(sleepy_edge) == launches + 1
    # The UI is back with the session from before the sleep: listed in the tabs,
    # its conversation on the page.
    expect(page.get_by_role("link", name=title).first).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name=title)).to_be_visible()
    expect(page.get_by_text(reply_for(prompt)).first).to_be_visible()


def test_a_prompt_from_an_open_page_wakes_the_sleeping_container(
        sleepy_edge: EdgeServer, pages: BrowserPages) -> None:
    page = pages.new_page(sleepy_edge.url)
    session_id = _open_session_and_prompt(page, sleepy_edge, "first prompt before the sleep")

    launches = _sleep_with_the_page_open(page, sleepy_edge, observe=5)

    # Sending a prompt is a POST: it wakes the container and is held until it runs.
    prompt = "second prompt wakes the workspace"
    with page.expect_response(lambda r: r.request.method == "POST" and "/prompt" in r.url,
                              timeout=START_MS) as posted:
        send_prompt(page, prompt)
    assert posted.value.status < 300, f"the prompt got {posted.value.status}"
    assert launched(sleepy_edge) == launches + 1
    assert container_state(sleepy_edge).status == "running"
    expect(page.get_by_text(prompt, exact=True).first).to_be_visible()
    # The prompt ran: its reply is in the session, as an API client reads it.
    with _api(sleepy_edge) as client:
        wait_until(page, lambda: reply_for(prompt) in _texts(client, session_id), 30,
                   "the reply to be stored")

    # The page shows it once it re-reads the session. (Without a reload it shows it
    # only if the UI's event stream, backed off while the container slept, happens to
    # reconnect before the reply's events are sent: opencode's UI does not re-read an
    # open session's messages when its event stream reconnects.)
    page.reload()
    expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)


# -- 3. and 4. the waking page ----------------------------------------------------------------


def _elapsed_seconds(page: Page) -> int:
    text = page.get_by_text(re.compile(r"Status: .+ · \d+ s")).inner_text()
    match = re.search(r"(\d+) s", text)
    assert match, text
    return int(match.group(1))


def test_a_sleeping_workspace_shows_the_waking_page_then_the_ui(
        tmp_path: Path, opencode_bin: str, fake_model: FakeModelServer,
        pages: BrowserPages) -> None:
    settings = ui_settings(tmp_path / "state", fake_model, wake_wait=0.5)
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

        # It reloads by itself once the container runs, and lands in the workspace
        # (edge/landing.py): the opencode UI, ready to prompt.
        expect(page.get_by_role("textbox", name="Prompt")).to_be_visible(timeout=START_MS)
        expect(page.get_by_role("heading", name="Starting your workspace")).to_have_count(0)
        assert re.search(r"/session/ses_", page.url), page.url
        assert container_state(edge).status == "running"
        assert launched(edge) == 1


def test_a_failed_start_shows_why_on_the_waking_page(
        tmp_path: Path, fake_model: FakeModelServer, pages: BrowserPages) -> None:
    missing = tmp_path / "nope"
    settings = ui_settings(tmp_path / "state", fake_model, wake_wait=0.5,
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
