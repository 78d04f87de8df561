"""The authentication layer on its own, over the in-memory key store: what it
refuses (401 with or without the Basic challenge, a redirect to the login page,
429, 503; a WebSocket closed before accept) and what it lets through (the open
path; an identity in the scope). It never sets a cookie: only the login page does."""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import quote

import pytest

from edge.auth import Authenticator
from edge.authentication import IDENTITY, Authentication
from edge.session import Session, SessionSigner
from edge.throttle import FailureThrottle
from edge.types import Message, Scope
from infra.credentials import mint_api_key
from infra.interfaces import AdminUser
from infra.settings import Settings
from tests.support.asgi import Recorder, call_layer
from tests.support.memory import MemoryKeyStore

pytestmark = pytest.mark.unit

PEPPER = b"p" * 32
SESSION_SECRET = b"s" * 32
BROWSER = [(b"sec-fetch-mode", b"navigate"), (b"sec-fetch-site", b"none"),
           (b"sec-fetch-dest", b"document"), (b"accept", b"text/html,*/*"),
           (b"user-agent", b"Mozilla/5.0 (X11) Chrome/126")]
BACKGROUND = [(b"sec-fetch-mode", b"cors"), (b"sec-fetch-site", b"same-origin"),
              (b"user-agent", b"Mozilla/5.0 (X11) Chrome/126")]
CURL = [(b"user-agent", b"curl/8.5.0")]


class Gate:
    """An authentication layer around a recording app, with one admin and one API key."""

    def __init__(self, admin: bool = True, max_failures: int = 5, **settings: Any) -> None:
        self.keys = MemoryKeyStore()
        if admin:
            # Never checked here: the tests log in with API keys (no argon2 cost).
            self.keys.admin = AdminUser("admin", b"$argon2id$not-a-real-hash")
        new = mint_api_key("test", PEPPER)
        self.keys.keys[new.record.id] = new.record
        self.key = new.key
        self.inner = Recorder()
        self.layer = Authentication(
            self.inner,
            Authenticator(self.keys, PEPPER, SessionSigner(SESSION_SECRET),
                          FailureThrottle(self.keys, max_failures, 300.0), cache_ttl=0),
            Settings().with_overrides(**settings))

    def call(self, path: str = "/session", headers: list[tuple[bytes, bytes]] | None = None,
             kind: str = "http", query: bytes = b"") -> list[Message]:
        scope: Scope = {"type": kind, "path": path, "headers": headers or [],
                        "client": ("192.0.2.1", 50000), "scheme": "ws" if kind != "http"
                        else "http", "method": "GET", "query_string": query}
        return call_layer(self.layer, scope)

    def bearer(self, key: str | None = None) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", f"Bearer {key or self.key}".encode())]


def start(sent: list[Message]) -> Message:
    return next(m for m in sent if m["type"] == "http.response.start")


def header(sent: list[Message], name: bytes) -> list[bytes]:
    return [v for n, v in start(sent)["headers"] if n == name]


def body(sent: list[Message]) -> Any:
    return json.loads(b"".join(m.get("body", b"") for m in sent
                               if m["type"] == "http.response.body"))


def test_no_credentials_get_401_with_the_basic_challenge_and_never_reach_the_app() -> None:
    gate = Gate()
    sent = gate.call()
    assert start(sent)["status"] == 401
    assert header(sent, b"www-authenticate")[0].startswith(b'Basic realm="opencode-edge"')
    assert body(sent)["error"] == "unauthorized"
    assert gate.inner.scopes == []


def test_a_person_gets_the_refusal_as_a_page_a_program_as_json() -> None:
    gate = Gate()
    page = gate.call(headers=[(b"accept", b"text/html,*/*")])
    assert start(page)["status"] == 401
    assert header(page, b"content-type")[0].startswith(b"text/html")
    assert b"Log in to opencode-edge" in b"".join(m.get("body", b"") for m in page)
    assert header(gate.call(), b"content-type")[0].startswith(b"application/json")


def test_an_uninitialised_deployment_answers_503_with_retry_after() -> None:
    gate = Gate(admin=False)
    sent = gate.call(headers=gate.bearer())
    assert start(sent)["status"] == 503
    assert header(sent, b"retry-after") == [b"30"]
    assert body(sent)["error"] == "not_initialised"
    assert gate.inner.scopes == []


def test_too_many_failures_answer_429_to_the_password_but_never_to_a_valid_key() -> None:
    gate = Gate(max_failures=2)
    wrong = gate.bearer(mint_api_key("other", PEPPER).key)
    for _ in range(2):
        assert start(gate.call(headers=wrong))["status"] == 401
    password = base64.b64encode(b"admin:some-password-guess").decode()
    sent = gate.call(headers=[(b"authorization", f"Basic {password}".encode())])
    assert start(sent)["status"] == 429
    assert int(header(sent, b"retry-after")[0]) >= 1
    assert body(sent)["error"] == "too_many_failures"
    assert gate.inner.scopes == []
    # A valid key still gets in, from the same address.
    assert start(gate.call(headers=gate.bearer()))["status"] == 200


def test_the_identity_travels_on_in_the_scope() -> None:
    gate = Gate()
    assert start(gate.call(headers=gate.bearer()))["status"] == 200
    identity = gate.inner.scopes[0][IDENTITY]
    assert (identity.subject, identity.method) == ("key", "key")


def test_a_browser_loading_a_page_is_sent_to_the_login_page_and_back() -> None:
    gate = Gate()
    sent = gate.call("/server/abc/session", headers=BROWSER, query=b"a=1&b=%20")
    assert start(sent)["status"] == 303
    location = header(sent, b"location")[0].decode()
    assert location == "/_edge/login?next=" + quote("/server/abc/session?a=1&b=%20", safe="")
    assert header(sent, b"www-authenticate") == []
    assert gate.inner.scopes == []


def test_a_browser_gets_no_basic_challenge_and_no_cookie() -> None:
    gate = Gate()
    sent = gate.call(headers=BACKGROUND)
    assert start(sent)["status"] == 401
    assert header(sent, b"www-authenticate") == [], "a browser would prompt and cache Basic"
    # Even logging in with a key sets no cookie: cookies come from the login page.
    sent = gate.call(headers=BROWSER + gate.bearer())
    assert start(sent)["status"] == 200
    assert header(sent, b"set-cookie") == []


def test_a_browser_s_basic_credentials_are_ignored() -> None:
    gate = Gate()
    basic = base64.b64encode(f"anyone:{gate.key}".encode()).decode()
    credentials = [(b"authorization", f"Basic {basic}".encode())]
    # A program may send an API key as the Basic password ...
    assert start(gate.call(headers=CURL + credentials))["status"] == 200
    # ... a browser that cached it is sent to log in instead.
    assert start(gate.call(headers=BROWSER + credentials))["status"] == 303


def test_a_signed_cookie_of_the_current_epoch_lets_a_browser_in() -> None:
    gate = Gate()
    signer = SessionSigner(SESSION_SECRET)
    record = next(iter(gate.keys.keys.values()))
    value = signer.issue(Session("key", time.time() + 60, record.id, epoch=0)).encode()
    cookie = [(b"cookie", b"theme=dark; ocedge_session=" + value)]
    assert start(gate.call(headers=BACKGROUND + cookie))["status"] == 200
    assert gate.inner.scopes[-1][IDENTITY].method == "cookie"
    # Over HTTPS only the __Host- name counts (no other host of the site can plant it).
    https = Gate(cookie_secure="true")
    https.keys.keys = gate.keys.keys
    assert start(https.call(headers=BACKGROUND + cookie))["status"] == 401
    secure = [(b"cookie", b"__Host-ocedge_session=" + value)]
    assert start(https.call(headers=BACKGROUND + secure))["status"] == 200
    # A new epoch (a logout anywhere) ends it.
    gate.keys.epoch = 1
    assert start(gate.call(headers=BACKGROUND + cookie))["status"] == 401


@pytest.mark.parametrize("cookie", [
    "ocedge_session=é.ü".encode(), b"ocedge_session=\xff\xfe.\x00", b"ocedge_session=" + b"a" * 5000,
    b"ocedge_session=.", b"ocedge_session", b"=;;==", b"ocedge_session=a.b.c"])
def test_any_cookie_value_is_refused_cleanly(cookie: bytes) -> None:
    gate = Gate()
    sent = gate.call(headers=[*BACKGROUND, (b"cookie", cookie)])
    assert start(sent)["status"] == 401


def test_curl_gets_the_basic_challenge() -> None:
    gate = Gate()
    sent = gate.call(headers=CURL)
    assert start(sent)["status"] == 401
    assert header(sent, b"www-authenticate")[0].startswith(b'Basic realm="opencode-edge"')


def test_two_credential_headers_are_refused_not_guessed() -> None:
    gate = Gate()
    for pair in ([(b"authorization", b"Bearer oce_x_y"), *gate.bearer()],
                 [*gate.bearer(), (b"authorization", b"Bearer oce_x_y")],
                 [(b"x-api-key", b"nope"), (b"x-api-key", gate.key.encode())]):
        sent = gate.call(headers=CURL + pair)
        assert start(sent)["status"] == 401, pair
    assert gate.inner.scopes == []


def test_a_websocket_without_credentials_is_closed_before_accept() -> None:
    gate = Gate()
    sent = gate.call("/pty/1/connect", kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert gate.inner.scopes == []


def test_a_websocket_with_a_key_reaches_the_app() -> None:
    gate = Gate()
    sent = gate.call("/pty/1/connect", headers=gate.bearer(), kind="websocket")
    assert sent == [{"type": "websocket.accept"}]


def test_health_needs_no_login() -> None:
    gate = Gate(admin=False)
    assert start(gate.call("/_edge/health"))["status"] == 200
    assert IDENTITY not in gate.inner.scopes[0]


def test_a_signed_cookie_that_claims_to_outlive_the_session_lifetime_is_refused() -> None:
    gate = Gate()
    record = next(iter(gate.keys.keys.values()))
    signer = SessionSigner(SESSION_SECRET, ttl=3600)
    for expires, status in ((time.time() + 3000, 200), (time.time() + 30 * 86400, 401),
                            (time.time() - 1, 401)):
        value = signer.issue(Session("key", expires, record.id, epoch=0)).encode()
        sent = gate.call(headers=[*BACKGROUND, (b"cookie", b"ocedge_session=" + value)])
        assert start(sent)["status"] == status, expires
