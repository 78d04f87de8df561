"""The same-origin layer and anti-framing, on their own: writes and WebSockets only
from the edge's own origin, cross-origin reads refused, links from elsewhere still
open the page, the local edge answers only to its own host names (DNS rebinding),
and every answer forbids framing while keeping the upstream's own CSP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.framing import NoFraming, merge_policy
from edge.origin import SameOrigin, parse_origin
from edge.types import Message, Scope
from infra.settings import Settings
from tests.support.asgi import Recorder, call_layer

pytestmark = pytest.mark.unit

EDGE = "http://127.0.0.1:8787"


# opencode's own kind of policy, which the anti-framing must keep.
OPENCODE_CSP = b"default-src 'self'; frame-ancestors *"


def call(headers: dict[str, str] | list[tuple[str, str]], method: str = "GET",
         kind: str = "http", host: str | None = "127.0.0.1:8787", scheme: str = "http",
         inner: Recorder | None = None, event: dict[str, Any] | None = None,
         **settings: Any) -> tuple[list[Message], Recorder]:
    inner = inner or Recorder(OPENCODE_CSP)
    app = NoFraming(SameOrigin(inner, Settings().with_overrides(**settings)))
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in pairs]
    if host is not None:
        raw.insert(0, (b"host", host.encode("latin-1")))
    scope: Scope = {"type": kind, "method": method, "path": "/session", "headers": raw,
                    "scheme": scheme, "client": ("127.0.0.1", 5000), "query_string": b""}
    if event is not None:
        scope["aws.event"] = event  # as Mangum passes it
    sent = call_layer(app, scope)
    return sent, inner


def status(sent: list[Message]) -> int:
    if sent[0]["type"] == "websocket.close":
        return 403
    if sent[0]["type"] == "websocket.accept":
        return 101
    return int(sent[0]["status"])


def headers_of(sent: list[Message]) -> dict[bytes, list[bytes]]:
    found: dict[bytes, list[bytes]] = {}
    for name, value in sent[0]["headers"]:
        found.setdefault(name, []).append(value)
    return found


# -- writes and WebSockets ----------------------------------------------------------------


@pytest.mark.parametrize(("headers", "allowed"), [
    ({}, True),  # curl, an SDK: no browser headers at all
    ({"Origin": EDGE}, True),
    ({"Origin": EDGE, "Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "none"}, True),  # the user's own action
    ({"Origin": "https://evil.example"}, False),
    ({"Origin": "http://127.0.0.1:9999"}, False),  # another local port: same site
    ({"Origin": "http://localhost:8787"}, False),  # another origin, same machine
    ({"Origin": "null"}, False),  # a sandboxed frame, a data: URL
    ({"Origin": "https://127.0.0.1:8787"}, False),  # another scheme
    ({"Sec-Fetch-Site": "same-site"}, False),
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Origin": EDGE, "Sec-Fetch-Site": "same-site"}, False),
    ([("Origin", EDGE), ("Origin", "https://evil.example")], False),
    ({"Origin": "http://127.0.0.1:8787/path"}, False),
    ({"Origin": "http://user@127.0.0.1:8787"}, False),
    ({"Origin": "\u00e9vil"}, False),
], ids=["no-headers", "own-origin", "own-origin-same-origin", "typed-by-user", "foreign-site",
        "other-port", "other-host-name", "null", "other-scheme", "same-site", "cross-site",
        "own-origin-but-same-site", "two-origins", "origin-with-path", "origin-with-user",
        "latin1-origin"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "WEBSOCKET"])
def test_writes_and_websockets_come_only_from_the_edge_s_own_origin(
        headers: dict[str, str], allowed: bool, method: str) -> None:
    kind = "websocket" if method == "WEBSOCKET" else "http"
    sent, inner = call(headers, method="GET" if kind == "websocket" else method, kind=kind)
    if allowed:
        assert status(sent) in (200, 101)
        assert inner.calls == 1
    else:
        assert status(sent) == 403, sent
        assert inner.calls == 0
        if kind == "http":
            assert json.loads(sent[1]["body"])["error"] == "cross_origin"


def test_the_public_url_is_the_edge_s_own_origin_too() -> None:
    public = "https://edge.example.com"
    sent, _ = call({"Origin": public}, method="POST", public_url=public + "/")
    assert status(sent) == 200
    sent, _ = call({"Origin": "https://other.example.com"}, method="POST", public_url=public)
    assert status(sent) == 403
    sent, _ = call({"Origin": public}, method="POST", public_url="HTTPS://Edge.Example.com:443/")
    assert status(sent) == 200


def test_behind_https_the_own_origin_is_https() -> None:
    # On AWS the front door terminates TLS: the edge sees http but the page is https.
    sent, _ = call({"Origin": "https://abc.lambda-url.us-east-1.on.aws"}, method="POST",
                   host="abc.lambda-url.us-east-1.on.aws", web_adapter=True, cookie_secure="true")
    assert status(sent) == 200
    sent, _ = call({"Origin": "http://abc.lambda-url.us-east-1.on.aws"}, method="POST",
                   host="abc.lambda-url.us-east-1.on.aws", web_adapter=True, cookie_secure="true")
    assert status(sent) == 403
    sent, _ = call({"Origin": "https://xyz.lambda-url.us-east-1.on.aws"}, method="POST",
                   host="abc.lambda-url.us-east-1.on.aws", web_adapter=True, cookie_secure="true")
    assert status(sent) == 403  # another Function URL: same site when on.aws is not on the PSL


def test_behind_a_lambda_front_door_the_domain_it_served_is_the_own_origin() -> None:
    # Whatever Host reached the edge, the request context names the domain the
    # Function URL (via Lambda Web Adapter) or API Gateway (via Mangum) served.
    context = json.dumps({"domainName": "urlid.lambda-url.eu-west-1.on.aws",
                          "http": {"sourceIp": "198.51.100.1"}})
    own = {"Origin": "https://urlid.lambda-url.eu-west-1.on.aws"}
    sent, _ = call(own | {"X-Amzn-Request-Context": context}, method="POST",
                   host="127.0.0.1:8080", web_adapter=True)
    assert status(sent) == 200
    # Not under the adapter, that header is the client's own writing.
    sent, _ = call(own | {"X-Amzn-Request-Context": context}, method="POST",
                   host="127.0.0.1:8080")
    assert status(sent) == 403
    event = {"requestContext": {"domainName": "abc.execute-api.us-east-1.amazonaws.com"}}
    sent, _ = call({"Origin": "https://abc.execute-api.us-east-1.amazonaws.com"}, method="POST",
                   host="abc.execute-api.us-east-1.amazonaws.com", event=event)
    assert status(sent) == 200
    sent, _ = call({"Origin": "https://evil.example"}, method="POST",
                   host="abc.execute-api.us-east-1.amazonaws.com", event=event)
    assert status(sent) == 403


# -- reads -----------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
      "Sec-Fetch-Dest": "document"}, True),  # a link from elsewhere opens the UI
    ({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, True),
    ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors",
      "Origin": "http://127.0.0.1:9999"}, False),  # fetch() from another port
    ({"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors",
      "Sec-Fetch-Dest": "script"}, False),  # <script src> from another port
    ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
      "Sec-Fetch-Dest": "iframe"}, False),  # framed by another site
    ({"Origin": "https://evil.example"}, False),  # a CORS read
], ids=["link", "own-fetch", "fetch-from-other-port", "script-include", "iframe", "cors-read"])
def test_other_sites_may_link_to_the_edge_but_not_read_it(headers: dict[str, str],
                                                           allowed: bool) -> None:
    sent, inner = call(headers)
    assert (status(sent) == 200) is allowed
    assert inner.calls == (1 if allowed else 0)


# -- host names ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1:8787", 200), ("localhost:8787", 200), ("[::1]:8787", 200),
    ("LOCALHOST.:8787", 200), ("evil.example:8787", 421), ("127.0.0.1.nip.io:8787", 421),
    ("my.laptop.lan", 200), ("edge.example.com", 200), ("a.dev.example.com", 200),
    ("dev.example.com", 421), ("evil.example/../", 400), ("x y", 400),
])
def test_the_local_edge_answers_only_to_its_own_host_names(host: str, expected: int) -> None:
    sent, _ = call({}, host=host, public_url="https://edge.example.com",
                   allowed_hosts="my.laptop.lan, *.dev.example.com")
    assert status(sent) == expected


def test_two_host_headers_are_a_bad_request() -> None:
    sent, inner = call([("Host", "evil.example")])
    assert status(sent) == 400 and inner.calls == 0


def test_on_aws_the_front_door_routes_by_host_so_any_host_passes_unless_configured() -> None:
    sent, _ = call({}, host="urlid.lambda-url.us-east-1.on.aws", web_adapter=True)
    assert status(sent) == 200
    sent, _ = call({}, host="abc.execute-api.us-east-1.amazonaws.com", web_adapter=True,
                   allowed_hosts="*.lambda-url.us-east-1.on.aws")
    assert status(sent) == 421


def test_a_dns_rebinding_page_cannot_write_either() -> None:
    # evil.example resolved to 127.0.0.1: its page's Origin matches its Host, but the
    # Host is not the edge's.
    sent, inner = call({"Origin": "http://evil.example:8787"}, method="POST",
                       host="evil.example:8787")
    assert status(sent) == 421 and inner.calls == 0


# -- anti-framing --------------------------------------------------------------------------


def test_every_answer_forbids_framing_and_keeps_the_upstream_policy() -> None:
    sent, _ = call({})
    found = headers_of(sent)
    assert found[b"x-frame-options"] == [b"DENY"]
    assert found[b"content-security-policy"] == [b"default-src 'self'; frame-ancestors 'none'"]
    sent, _ = call({}, inner=Recorder())
    assert headers_of(sent)[b"content-security-policy"] == [b"frame-ancestors 'none'"]
    # Refusals too.
    sent, _ = call({"Origin": "https://evil.example"}, method="POST")
    assert headers_of(sent)[b"x-frame-options"] == [b"DENY"]


@pytest.mark.parametrize(("policy", "merged"), [
    (b"default-src 'self'", b"default-src 'self'; frame-ancestors 'none'"),
    (b"frame-ancestors https://x; script-src 'self';",
     b"script-src 'self'; frame-ancestors 'none'"),
    (b"FRAME-ANCESTORS *", b"frame-ancestors 'none'"),
    (b"", b"frame-ancestors 'none'"),
])
def test_frame_ancestors_is_merged_into_a_policy(policy: bytes, merged: bytes) -> None:
    assert merge_policy(policy) == merged


@pytest.mark.parametrize(("value", "origin"), [
    (b"http://127.0.0.1:8787", "http://127.0.0.1:8787"),
    (b"HTTPS://Edge.Example.com:443", "https://edge.example.com"),
    (b"http://[::1]:80", "http://[::1]"),
    (b"null", None), (b"file://", None), (b"http://x:99999", None), (b"\xff", None),
])
def test_origins_are_compared_normalised(value: bytes, origin: str | None) -> None:
    assert parse_origin(value) == origin


def test_a_request_without_a_host_is_a_bad_request() -> None:
    sent, inner = call({"Authorization": "Bearer x"}, host=None)
    assert status(sent) == 400 and inner.calls == 0
