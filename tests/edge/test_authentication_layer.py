"""The authentication layer on its own, over the in-memory key store: what it
refuses (401, 429, 503; a WebSocket closed before accept), what it lets through
(the open paths; an identity in the scope), and the session cookie it adds for
browsers — and only for them — through its ``send`` wrapper."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from edge.auth import Authenticator
from edge.authentication import IDENTITY, Authentication
from edge.session import SessionSigner
from edge.throttle import FailureThrottle
from edge.types import Message, Receive, Scope, Send
from infra.credentials import mint_api_key
from infra.interfaces import AdminUser
from infra.settings import Settings
from tests.support.memory import MemoryKeyStore

pytestmark = pytest.mark.unit

PEPPER = b"p" * 32
BROWSER = [(b"sec-fetch-mode", b"navigate"), (b"user-agent", b"Mozilla/5.0 (X11) Chrome/126")]
CURL = [(b"user-agent", b"curl/8.5.0")]


class Inner:
    """The layer inside: answers 200 and remembers the scopes it was called with."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


class Gate:
    """An authentication layer around :class:`Inner`, with one admin and one API key."""

    def __init__(self, admin: bool = True, max_failures: int = 5, **settings: Any) -> None:
        self.keys = MemoryKeyStore()
        if admin:
            # Never checked here: the tests log in with API keys (no argon2 cost).
            self.keys.admin = AdminUser("admin", b"$argon2id$not-a-real-hash")
        new = mint_api_key("test", PEPPER)
        self.keys.keys[new.record.id] = new.record
        self.key = new.key
        self.inner = Inner()
        self.layer = Authentication(
            self.inner,
            Authenticator(self.keys, PEPPER, SessionSigner(b"s" * 32),
                          FailureThrottle(max_failures, 300.0), cache_ttl=0),
            Settings().with_overrides(**settings))

    def call(self, path: str = "/session", headers: list[tuple[bytes, bytes]] | None = None,
             kind: str = "http") -> list[Message]:
        scope: Scope = {"type": kind, "path": path, "headers": headers or [],
                        "client": ("192.0.2.1", 50000), "scheme": "ws" if kind != "http"
                        else "http", "method": "GET", "query_string": b""}
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "websocket.connect"} if kind == "websocket" else \
                {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        asyncio.run(self.layer(scope, receive, send))
        return sent

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


def test_too_many_failures_answer_429_with_retry_after_even_for_a_valid_key() -> None:
    gate = Gate(max_failures=2)
    wrong = gate.bearer(mint_api_key("other", PEPPER).key)
    for _ in range(2):
        assert start(gate.call(headers=wrong))["status"] == 401
    sent = gate.call(headers=gate.bearer())
    assert start(sent)["status"] == 429
    assert int(header(sent, b"retry-after")[0]) >= 1
    assert body(sent)["error"] == "too_many_failures"
    assert gate.inner.scopes == []


def test_the_identity_travels_on_in_the_scope() -> None:
    gate = Gate()
    assert start(gate.call(headers=gate.bearer()))["status"] == 200
    identity = gate.inner.scopes[0][IDENTITY]
    assert (identity.subject, identity.method) == ("key", "key")


def test_a_browser_gets_the_session_cookie_on_its_response() -> None:
    gate = Gate()
    sent = gate.call(headers=BROWSER + gate.bearer())
    cookies = header(sent, b"set-cookie")
    assert len(cookies) == 1 and cookies[0].startswith(b"ocedge_session=")
    assert b"HttpOnly" in cookies[0] and b"Secure" not in cookies[0]
    # The cookie alone then lets the browser in, and it is not issued again.
    again = gate.call(headers=[*BROWSER, (b"cookie", cookies[0].split(b";")[0])])
    assert start(again)["status"] == 200
    assert header(again, b"set-cookie") == []
    assert gate.inner.scopes[-1][IDENTITY].method == "cookie"


def test_the_cookie_is_secure_when_configured() -> None:
    gate = Gate(cookie_secure="true")
    assert b"Secure" in header(gate.call(headers=BROWSER + gate.bearer()), b"set-cookie")[0]


def test_curl_gets_no_cookie() -> None:
    gate = Gate()
    sent = gate.call(headers=CURL + gate.bearer())
    assert start(sent)["status"] == 200
    assert header(sent, b"set-cookie") == []


def test_a_websocket_without_credentials_is_closed_before_accept() -> None:
    gate = Gate()
    sent = gate.call("/pty/1/connect", kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert gate.inner.scopes == []


def test_a_websocket_with_a_key_reaches_the_app() -> None:
    gate = Gate()
    sent = gate.call("/pty/1/connect", headers=gate.bearer(), kind="websocket")
    assert sent == [{"type": "websocket.accept"}]


@pytest.mark.parametrize("path", ["/_edge/health", "/_edge/logout"])
def test_health_and_logout_need_no_login(path: str) -> None:
    gate = Gate(admin=False)
    assert start(gate.call(path))["status"] == 200
    assert IDENTITY not in gate.inner.scopes[0]
