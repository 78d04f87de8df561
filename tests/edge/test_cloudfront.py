"""The CloudFront layer: with OCEDGE_ORIGIN_SECRET set, only what came through the
distribution gets in (the bare Function URL is refused), and what did is handed on as
the viewer sent it — the viewer's host, https, the viewer's address — without the hop's
own headers, so the origin checks, the throttle and the headers opencode gets work on
the viewer's request."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from edge.cloudfront import CloudFrontOrigin
from edge.framing import NoFraming
from edge.origin import SameOrigin
from edge.types import Message, Scope
from infra.settings import Settings
from tests.support.asgi import Recorder, call_layer
from tests.support.capture import CaptureServer, attach_upstream, running_capture
from tests.support.edge import ADMIN_PASSWORD, EdgeServer, make_settings, running_edge

SECRET = "s3cr3t-origin-header-value-0123456789abcdef"
VIEWER = "d111111abcdef8.cloudfront.net"
FUNCTION_URL = "abc123.lambda-url.us-east-1.on.aws"
# What CloudFront sends the Function URL for a viewer's request (contract: infra/cloudfront.py).
HOP = {"x-ocedge-origin-secret": SECRET, "x-ocedge-viewer-host": VIEWER,
       "x-ocedge-viewer-address": "203.0.113.7"}
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}


def call(headers: list[tuple[str, str]], method: str = "GET", kind: str = "http",
         **settings: Any) -> tuple[list[Message], Recorder]:
    inner = Recorder()
    config = Settings().with_overrides(web_adapter=True, cookie_secure="true", **settings)
    app = NoFraming(CloudFrontOrigin(SameOrigin(inner, config), SECRET))
    raw = [(b"host", FUNCTION_URL.encode())] + [
        (k.lower().encode(), v.encode("latin-1")) for k, v in headers]
    scope: Scope = {"type": kind, "method": method, "path": "/session", "headers": raw,
                    "scheme": "http", "client": ("127.0.0.1", 40000), "query_string": b""}
    sent = call_layer(app, scope)
    return sent, inner


def status(sent: list[Message]) -> int:
    if sent[0]["type"] == "websocket.close":
        return 403
    return 101 if sent[0]["type"] == "websocket.accept" else int(sent[0]["status"])


def hop(**changes: str | None) -> list[tuple[str, str]]:
    headers = dict(HOP, **changes)
    return [(k, v) for k, v in headers.items() if v is not None]


@pytest.mark.unit
@pytest.mark.parametrize("headers", [
    [],
    hop(**{"x-ocedge-origin-secret": None}),
    hop(**{"x-ocedge-origin-secret": SECRET[:-1] + "x"}),
    hop(**{"x-ocedge-origin-secret": SECRET + "x"}),
    hop(**{"x-ocedge-origin-secret": ""}),
    [*hop(), ("x-ocedge-origin-secret", "guess")],  # a viewer's copy beside CloudFront's
    [*hop(), ("x-ocedge-origin-secret", SECRET)],
], ids=["nothing", "no-secret", "wrong-secret", "longer-secret", "empty-secret",
        "second-secret-guessed", "second-secret-equal"])
@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_only_what_came_through_the_distribution_gets_in(headers: list[tuple[str, str]],
                                                          kind: str) -> None:
    sent, inner = call(headers, kind=kind)
    assert status(sent) == 403
    assert not inner.scopes
    if kind == "http":
        body = sent[1]["body"]
        assert json.loads(body)["error"] == "not_through_cloudfront"
        assert SECRET.encode() not in body
        assert dict(sent[0]["headers"])[b"cache-control"] == b"no-store"


@pytest.mark.unit
def test_a_browser_that_found_the_function_url_gets_a_page_saying_where_to_go() -> None:
    sent, inner = call([("accept", "text/html"), ("sec-fetch-mode", "navigate")])
    assert status(sent) == 403 and not inner.scopes
    assert b"WebUrl" in sent[1]["body"]
    assert dict(sent[0]["headers"])[b"x-frame-options"] == b"DENY"


@pytest.mark.unit
@pytest.mark.parametrize("changes", [
    {"x-ocedge-viewer-host": None}, {"x-ocedge-viewer-address": None},
    {"x-ocedge-viewer-host": "evil.example/path"}, {"x-ocedge-viewer-host": "a b"},
    {"x-ocedge-viewer-host": "user@evil.example"}, {"x-ocedge-viewer-address": "not-an-ip"},
    {"x-ocedge-viewer-address": "203.0.113.7, 198.51.100.1"},
], ids=["no-host", "no-address", "host-with-path", "host-with-space", "host-with-user",
        "address-not-ip", "address-list"])
def test_without_a_well_formed_viewer_the_request_is_refused(changes: dict[str, str | None]) -> None:
    sent, inner = call(hop(**changes))
    assert status(sent) == 400 and not inner.scopes
    assert json.loads(sent[1]["body"])["error"] == "no_viewer"


@pytest.mark.unit
def test_the_request_is_handed_on_as_the_viewer_sent_it() -> None:
    context = json.dumps({"domainName": FUNCTION_URL, "http": {"sourceIp": "130.176.1.1"}})
    sent, inner = call([
        *hop(), ("x-amzn-request-context", context),
        ("x-forwarded-for", "10.9.9.9, 130.176.1.1"), ("x-forwarded-proto", "https"),
        ("x-amzn-lambda-context", "{}"), ("origin", f"https://{VIEWER}"), ("cookie", "a=b")],
        method="POST")
    assert status(sent) == 200
    scope = inner.scopes[0]
    names = [name for name, _ in scope["headers"]]
    assert [v for n, v in scope["headers"] if n == b"host"] == [VIEWER.encode()]
    assert scope["scheme"] == "https" and scope["client"] == ("203.0.113.7", 0)
    for gone in (b"x-ocedge-origin-secret", b"x-ocedge-viewer-host", b"x-ocedge-viewer-address",
                 b"x-amzn-request-context", b"x-forwarded-for", b"x-forwarded-proto"):
        assert gone not in names
    # What the viewer sent, and the Lambda context the stream deadline reads, stay.
    assert {b"origin", b"cookie", b"x-amzn-lambda-context"} <= set(names)


@pytest.mark.unit
@pytest.mark.parametrize(("origin", "allowed"), [
    (f"https://{VIEWER}", True),
    (f"http://{VIEWER}", False),  # the viewer's page is https
    (f"https://{FUNCTION_URL}", False),  # the Function URL is no page of the edge's any more
    ("https://evil.example", False),
])
def test_writes_and_websockets_come_only_from_the_viewer_s_own_origin(origin: str,
                                                                      allowed: bool) -> None:
    for kind, method in (("http", "POST"), ("websocket", "GET")):
        sent, _ = call([*hop(), ("origin", origin)], method=method, kind=kind)
        assert status(sent) == ((200 if kind == "http" else 101) if allowed else 403), (kind, origin)


# -- the whole edge, in front of a recording upstream ---------------------------------------


@pytest.fixture
def cloudfront_edge(state_dir: Path) -> Iterator[EdgeServer]:
    settings = make_settings(state_dir, origin_secret=SECRET, auth_max_failures=2)
    with running_edge(settings) as server:
        yield server


@pytest.fixture
def upstream(cloudfront_edge: EdgeServer) -> Iterator[CaptureServer]:
    with running_capture() as capture:
        attach_upstream(cloudfront_edge, capture.port)
        yield capture


def _client(edge: EdgeServer) -> httpx.Client:
    return httpx.Client(base_url=edge.url, trust_env=False, timeout=30)


def test_the_edge_refuses_requests_that_bypass_cloudfront(cloudfront_edge: EdgeServer,
                                                          upstream: CaptureServer) -> None:
    with _client(cloudfront_edge) as c:
        assert c.get("/session", headers=ADMIN).status_code == 403
        assert c.get("/_edge/health").status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(cloudfront_edge.url.replace("http", "ws") + "/pty/x/connect",
                   additional_headers=ADMIN, proxy=None, open_timeout=5)
    assert refused.value.response.status_code == 403
    assert not upstream.requests


def test_opencode_sees_the_viewer_s_host_and_address_and_never_the_secret(
        cloudfront_edge: EdgeServer, upstream: CaptureServer) -> None:
    with _client(cloudfront_edge) as c:
        # The terminal's ticket: opencode compares the Origin's host with the Host.
        response = c.post("/pty/term1/connect-token", headers=ADMIN | HOP | {
            "Origin": f"https://{VIEWER}", "x-opencode-ticket": "1"})
    assert response.status_code == 200
    seen = upstream.last("/pty/term1/connect-token")
    assert seen.header_values("host") == [VIEWER]
    assert seen.header_values("origin") == [f"https://{VIEWER}"]
    assert seen.header_values("x-forwarded-for") == ["203.0.113.7"]
    assert seen.header_values("x-forwarded-proto") == ["https"]
    assert not any(name.startswith("x-ocedge-") for name in seen.header_names)
    assert all(SECRET not in value for _, value in seen.headers)


def test_failed_logins_count_against_the_viewer_not_cloudfront(
        cloudfront_edge: EdgeServer, upstream: CaptureServer) -> None:
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:wrong-password!").decode()}
    other = HOP | {"x-ocedge-viewer-address": "198.51.100.9"}
    with _client(cloudfront_edge) as c:
        codes = [c.get("/session", headers=wrong | HOP).status_code for _ in range(3)]
        assert codes[-1] == 429, codes
        # Another viewer behind the same CloudFront servers is not locked out.
        assert c.get("/session", headers=wrong | other).status_code == 401
        assert c.get("/session", headers=ADMIN | other).status_code == 200


_NAMES = st.sampled_from(["x-ocedge-origin-secret", "x-ocedge-viewer-host",
                          "x-ocedge-viewer-address", "host", "origin", "x-forwarded-for",
                          "X-Ocedge-Origin-Secret"])
_VALUES = st.one_of(st.sampled_from([SECRET, SECRET.upper(), SECRET + " ", " " + SECRET, VIEWER,
                                     "203.0.113.7", "::1", "", f"https://{VIEWER}"]),
                    st.text(max_size=40).map(lambda t: t.encode("utf-8", "replace").decode(
                        "latin-1")))


@pytest.mark.unit
@settings(max_examples=300, deadline=None, database=None)
@given(headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
       kind=st.sampled_from(["http", "websocket"]))
def test_no_generated_header_set_gets_in_without_the_secret_or_gets_a_5xx(
        headers: list[tuple[str, str]], kind: str) -> None:
    sent, inner = call(headers, method="POST" if kind == "http" else "GET", kind=kind)
    secrets = [v for n, v in headers if n.lower() == "x-ocedge-origin-secret"]
    assert status(sent) < 500
    if inner.scopes:
        assert secrets == [SECRET]
        assert not any(name.startswith(b"x-ocedge-") for name, _ in inner.scopes[0]["headers"])
    if kind == "http":
        assert SECRET.encode() not in b"".join(m.get("body", b"") for m in sent)
