"""The AWS shape, in a browser: headless Chromium reaches the workspace only through a
stand-in for the CloudFront distribution (tests/support/cloudfront.py), which sends the
terminal's WebSocket to the container's terminal listener and everything else to the
edge. Logging in, the opencode UI and its event stream, and a command typed into the
terminal all work through it; the edge and the terminal listener refuse whoever goes
around it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.sync.client import connect as ws_connect

from infra.net import free_port
from tests.support.browser import (
    BrowserPages,
    TerminalOutput,
    landed_already,
    open_workspace_project,
    send_prompt,
    serve_edge,
    session_cookies,
    ui_settings,
    wait_until,
)
from tests.support.cloudfront import CloudFrontStandIn, running_cloudfront
from tests.support.edge import EdgeServer
from tests.support.fake_model import FakeModelServer, reply_for

pytestmark = pytest.mark.browser

SECRET = "local-stand-in-origin-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
               fake_model: FakeModelServer) -> Iterator[tuple[EdgeServer, CloudFrontStandIn]]:
    """An edge and its container (with the terminal listener), as on AWS: behind the
    distribution's secret header, reached only through the stand-in."""
    settings = ui_settings(tmp_path_factory.mktemp("cloudfront") / "state", fake_model,
                           wake_wait=60, origin_secret=SECRET, terminal_port=free_port())
    with serve_edge(settings) as edge, \
            running_cloudfront(edge.port, settings.terminal_port, SECRET) as cloudfront:
        yield edge, cloudfront


def _open_terminal(page: Page, terminal: TerminalOutput) -> None:
    page.keyboard.press("Control+Backquote")
    expect(page.get_by_role("textbox", name="Terminal input").first).to_be_visible(
        timeout=15_000)
    wait_until(page, lambda: bool(terminal.sockets), 15, "the terminal's WebSocket")
    terminal.wait_for(page, r"[#$] ", timeout=20)


def test_the_ui_and_its_terminal_work_through_cloudfront(
        deployment: tuple[EdgeServer, CloudFrontStandIn], pages: BrowserPages) -> None:
    _edge, cloudfront = deployment
    page = pages.new_page(cloudfront.url, self_signed=True)
    # The login page, through the distribution: an HTTPS-only session cookie.
    assert session_cookies(page)
    assert all(c["secure"] for c in page.context.cookies() if "ocedge_session" in c["name"])

    terminal = TerminalOutput(page)
    landed_already(page, page.url)
    response = page.goto("/", timeout=60_000)
    assert response is not None and response.status == 200
    expect(page.get_by_placeholder("Search sessions")).to_be_visible(timeout=30_000)

    # A prompt and its answer: the UI's writes and its event stream pass the distribution.
    directory = page.request.get("/path").json()["directory"]
    open_workspace_project(page, Path(directory))
    page.get_by_role("button", name="New session").last.click()
    prompt = "hello through cloudfront"
    send_prompt(page, prompt)
    expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)

    _open_terminal(page, terminal)
    page.keyboard.type("echo cloudfront-$((6*7))\n")
    output = terminal.wait_for(page, r"cloudfront-42\r?\n")
    assert "echo cloudfront-$((6*7))" in output
    assert all(not socket.is_closed() for socket in terminal.sockets)

    # The terminal's socket went to the terminal listener with a ticket the edge signed
    # (<opencode's ticket>.<expiry>.<mac>), never to the edge.
    assert all(re.search(r"[?&]ticket=[^&.]+\.[0-9]+\.[A-Za-z0-9_-]+(&|$)", socket.url)
               for socket in terminal.sockets), [s.url for s in terminal.sockets]
    sockets = [path for behaviour, path in cloudfront.routed if path.endswith("/connect")
               and path.startswith("/pty/")]
    assert sockets and all(
        behaviour == "terminal" for behaviour, path in cloudfront.routed if path in sockets)
    assert any(path.endswith("/connect-token") for behaviour, path in cloudfront.routed
               if behaviour == "edge")
    # No other WebSocket: on AWS it would reach the Function URL, which cannot take it.
    assert cloudfront.refused_upgrades == []


def test_the_edge_and_the_terminal_listener_refuse_what_went_around_cloudfront(
        deployment: tuple[EdgeServer, CloudFrontStandIn]) -> None:
    edge, cloudfront = deployment
    with httpx.Client(trust_env=False, timeout=10) as client:
        direct = client.get(f"{edge.url}/_edge/status")
    assert direct.status_code == 403
    assert direct.json()["error"] == "not_through_cloudfront"
    # The same request through the distribution is let in (then asks for a login).
    with httpx.Client(trust_env=False, timeout=10, verify=False) as client:  # noqa: S501 - the stand-in is self-signed
        through = client.get(f"{cloudfront.url}/_edge/status")
    assert through.status_code == 401
    terminal = f"ws://127.0.0.1:{cloudfront.terminal_port}/pty/x/connect?ticket=t"
    for headers in ({}, {"x-ocedge-origin-secret": "wrong" * 8,
                         "x-ocedge-viewer-host": "127.0.0.1", "Origin": "https://127.0.0.1"}):
        with pytest.raises((InvalidStatus, InvalidMessage)):
            ws_connect(terminal, additional_headers=headers, proxy=None, open_timeout=5)
