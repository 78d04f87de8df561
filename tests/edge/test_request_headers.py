"""What the edge reads from a request's headers: activity or background, a
navigation, a browser, an event stream, HTML wanted, the client's address, HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

from edge.request import (
    ACTIVITY,
    BACKGROUND,
    client_address,
    intent,
    is_browser,
    is_navigation,
    is_secure,
    wants_event_stream,
    wants_html,
)
from edge.types import Scope

pytestmark = pytest.mark.unit


def scope(method: str = "GET", path: str = "/session", kind: str = "http",
          scheme: str = "http", **headers: str) -> Scope:
    raw = [(name.replace("_", "-").lower().encode(), value.encode())
           for name, value in headers.items()]
    result: dict[str, Any] = {"type": kind, "method": method, "path": path, "headers": raw,
                              "scheme": scheme, "client": ("192.0.2.1", 4000)}
    return result


@pytest.mark.parametrize(("request_scope", "expected"), [
    (scope("POST"), ACTIVITY),
    (scope("POST", sec_fetch_mode="cors"), ACTIVITY),  # the UI sending a prompt
    (scope("GET"), ACTIVITY),  # curl, an SDK, the opencode CLI
    (scope("GET", accept="text/event-stream"), BACKGROUND),  # an SDK's event stream
    (scope("GET", sec_fetch_mode="navigate"), ACTIVITY),  # opening the page
    (scope("GET", sec_fetch_mode="cors"), BACKGROUND),  # an open tab's poll
    (scope("OPTIONS"), BACKGROUND),
    (scope("GET", kind="websocket"), BACKGROUND),  # messages count, not the connect
], ids=["post", "browser-post", "curl-get", "sdk-events", "navigation", "tab-poll",
        "options", "websocket"])
def test_only_use_of_the_workspace_is_activity(request_scope: Scope, expected: str) -> None:
    assert intent(request_scope) == expected


def test_navigation_is_sec_fetch_mode_navigate() -> None:
    assert is_navigation(scope(sec_fetch_mode="navigate"))
    assert not is_navigation(scope(sec_fetch_mode="cors"))
    assert not is_navigation(scope())


@pytest.mark.parametrize(("headers", "browser"), [
    ({"user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}, True),
    ({"sec_fetch_site": "same-origin"}, True),
    ({"user_agent": "curl/8.5.0"}, False),
    ({"user_agent": "opencode/1.2"}, False),
    ({}, False),
])
def test_a_browser_is_told_by_sec_fetch_or_a_mozilla_agent(headers: dict[str, str],
                                                           browser: bool) -> None:
    assert is_browser(scope(**headers)) is browser


def test_an_event_stream_is_asked_for_by_accept_or_by_its_path() -> None:
    assert wants_event_stream(scope(accept="text/event-stream"))
    assert wants_event_stream(scope(path="/global/event"))
    assert wants_event_stream(scope(path="/event"))
    assert not wants_event_stream(scope(path="/session", accept="application/json"))


def test_html_is_wanted_when_accept_names_it() -> None:
    assert wants_html(scope(accept="text/html,application/xhtml+xml,*/*;q=0.8"))
    assert not wants_html(scope(accept="application/json"))
    assert not wants_html(scope())


def test_forwarded_for_names_the_client_only_behind_a_trusted_proxy() -> None:
    spoofed = scope(x_forwarded_for="203.0.113.9, 10.0.0.1")
    assert client_address(spoofed, trust_forwarded=False) == "192.0.2.1"
    assert client_address(spoofed, trust_forwarded=True) == "203.0.113.9"
    assert client_address(scope(), trust_forwarded=True) == "192.0.2.1"


def test_https_is_the_setting_or_else_the_scheme_or_a_trusted_forwarded_proto() -> None:
    plain, forwarded = scope(), scope(x_forwarded_proto="https")
    assert is_secure(plain, "true", trust_forwarded=False)
    assert not is_secure(scope(scheme="https"), "false", trust_forwarded=False)
    assert is_secure(scope(scheme="https"), "auto", trust_forwarded=False)
    assert is_secure(scope(kind="websocket", scheme="wss"), "auto", trust_forwarded=False)
    assert not is_secure(plain, "auto", trust_forwarded=True)
    assert not is_secure(forwarded, "auto", trust_forwarded=False)
    assert is_secure(forwarded, "auto", trust_forwarded=True)
