"""What the edge reads from a request's headers: activity or background, a
navigation, a browser, an event stream, HTML wanted, the client's address (from the
front door, never from what the client writes), the Host, HTTPS."""

from __future__ import annotations

import json
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
    request_host,
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


def test_forwarded_for_names_the_client_only_behind_a_trusted_proxy_by_its_last_hop() -> None:
    # The first entries are whatever the client wrote; the trusted proxy appends the last.
    spoofed = scope(x_forwarded_for="203.0.113.9, 10.0.0.1")
    assert client_address(spoofed, trust_forwarded=False) == "192.0.2.1"
    assert client_address(spoofed, trust_forwarded=True) == "10.0.0.1"
    assert client_address(scope(), trust_forwarded=True) == "192.0.2.1"
    # Several headers count as one list; garbage in the last hop falls back to the socket.
    split = scope()
    split["headers"] += [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-for", b"10.0.0.2")]
    assert client_address(split, trust_forwarded=True) == "10.0.0.2"
    assert client_address(scope(x_forwarded_for="1.2.3.4, evil"), trust_forwarded=True) == \
        "192.0.2.1"


def _context(source_ip: str) -> str:
    return json.dumps({"http": {"method": "GET", "sourceIp": source_ip}, "requestId": "r"})


def test_under_the_web_adapter_the_request_context_names_the_client() -> None:
    lwa = scope(x_amzn_request_context=_context("198.51.100.20"),
                x_forwarded_for="203.0.113.66")
    assert client_address(lwa, trust_forwarded=True, web_adapter=True) == "198.51.100.20"
    # API Gateway v1 shape.
    v1 = scope(x_amzn_request_context=json.dumps({"identity": {"sourceIp": "198.51.100.21"}}))
    assert client_address(v1, trust_forwarded=False, web_adapter=True) == "198.51.100.21"
    # Not under the adapter, the header is the client's own writing: ignored.
    assert client_address(lwa, trust_forwarded=False) == "192.0.2.1"
    # Unreadable contexts fall back to the socket, never raise.
    for bad in ("{", "[]", '{"http": {"sourceIp": "not an address"}}', '{"http": 3}'):
        assert client_address(scope(x_amzn_request_context=bad), False, web_adapter=True) == \
            "192.0.2.1"


def test_under_mangum_the_event_names_the_client() -> None:
    api = scope(x_forwarded_for="203.0.113.66")
    api["aws.event"] = {"requestContext": {"http": {"sourceIp": "198.51.100.7"}}}
    api["client"] = ("198.51.100.7", 0)
    assert client_address(api, trust_forwarded=True) == "198.51.100.7"


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1:8787", ("127.0.0.1", "127.0.0.1:8787")),
    ("LocalHost.:80", ("localhost", "localhost:80")),
    ("[::1]:8787", ("::1", "[::1]:8787")),
    ("edge.example.com", ("edge.example.com", "edge.example.com")),
    ("evil.example/x", None), ("a@b", None), ("x:notaport", None), ("", None), ("a b", None),
])
def test_the_host_header_is_one_host_name_or_nothing(host: str,
                                                     expected: tuple[str, str] | None) -> None:
    assert request_host(scope(host=host)) == expected


def test_two_host_headers_are_no_host() -> None:
    twice = scope(host="127.0.0.1")
    twice["headers"].append((b"host", b"evil.example"))
    assert request_host(twice) is None


def test_https_is_the_setting_or_else_the_scheme_or_a_trusted_forwarded_proto() -> None:
    plain, forwarded = scope(), scope(x_forwarded_proto="https")
    assert is_secure(plain, "true", trust_forwarded=False)
    assert not is_secure(scope(scheme="https"), "false", trust_forwarded=False)
    assert is_secure(scope(scheme="https"), "auto", trust_forwarded=False)
    assert is_secure(scope(kind="websocket", scheme="wss"), "auto", trust_forwarded=False)
    assert not is_secure(plain, "auto", trust_forwarded=True)
    assert not is_secure(forwarded, "auto", trust_forwarded=False)
    assert is_secure(forwarded, "auto", trust_forwarded=True)
