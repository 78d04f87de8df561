"""The login page over HTTP: the form, wrong input re-shown with a message, the
session cookie and the way back to the page asked for (a path on this edge only),
no login from another site, bodies too large or too slow, and two-factor login."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from edge import login as login_module
from edge.login import safe_next
from infra import totp
from infra.admin import enable_totp
from tests.support.capture import CaptureServer, attach_upstream, running_capture
from tests.support.edge import ADMIN_PASSWORD, EdgeServer
from tests.support.login import FORM_POST, cookie_from, login_cookie, post_login

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "none", "Sec-Fetch-Dest": "document",
            "Accept": "text/html", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126"}


@pytest.fixture
def upstream(edge: EdgeServer) -> Iterator[CaptureServer]:
    with running_capture() as capture:
        attach_upstream(edge, capture.port)
        yield capture


def get(edge: EdgeServer, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=edge.url, trust_env=False, timeout=30) as client:
        return client.get(path, headers=headers)


@pytest.mark.unit
@pytest.mark.parametrize(("value", "expected"), [
    ("/", "/"), ("/session?x=1&y=%20", "/session?x=1&y=%20"),
    ("/server/aHR0cA/session/ses_1", "/server/aHR0cA/session/ses_1"),
    ("/caf\u00e9", "/caf%C3%A9"),
    ("//evil.example/", "/"), ("/\\evil.example", "/"), ("https://evil.example/", "/"),
    ("evil.example", "/"), ("", "/"), ("/\t/evil.example", "/"), ("/x\r\nSet-Cookie: a=b", "/"),
    ("/_edge/login?next=//evil", "/"), ("/_edge/logout", "/"), ("/" + "a" * 3000, "/"),
    ("javascript:alert(1)", "/"),
    # Dot segments are resolved as a browser would, before the checks.
    ("/.//evil.example", "/"), ("/a/..//evil.example/", "/"), ("/%2e//evil.example", "/"),
    ("/x/%2E%2e//evil.example", "/"), ("/a/../_edge/login", "/"), ("/./_edge/logout", "/"),
    ("/a/./b/../c?x=/../..", "/a/c?x=/../.."), ("/a/..", "/"), ("/a/b/.", "/a/b/"),
    ("/../..", "/"), ("/a//b", "/a//b"), ("/.hidden/..x", "/.hidden/..x"),
])
def test_the_way_back_is_a_path_on_this_edge(value: str, expected: str) -> None:
    assert safe_next(value) == expected


def test_a_browser_is_sent_to_the_login_form_and_back_to_its_page(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    asked = "/server/abc/session/ses_1?tab=2"
    response = get(edge, asked, NAVIGATE)
    assert response.status_code == 303
    assert response.headers["location"] == f"/_edge/login?next={quote(asked, safe='')}"
    assert "www-authenticate" not in response.headers
    form = get(edge, response.headers["location"], NAVIGATE)
    assert form.status_code == 200
    assert form.headers["cache-control"] == "no-store"
    assert "script-src 'none'" in form.headers["content-security-policy"]
    page = form.text
    for expected in ('<form method="post" action="/_edge/login">', '<label for="username">',
                     'autocomplete="current-password"', f'value="{asked}"'):
        assert expected in page
    assert 'name="code"' not in page, "a code field without 2FA"
    login = post_login(edge.url, "admin", ADMIN_PASSWORD, next_path=asked)
    assert login.status_code == 303 and login.headers["location"] == asked
    back = get(edge, asked, NAVIGATE | {"Cookie": cookie_from(login)})
    assert back.status_code == 200
    assert upstream.last().path == "/server/abc/session/ses_1"
    # Already logged in, the login page sends the browser straight on.
    again = get(edge, "/_edge/login?next=%2Fsession", NAVIGATE | {"Cookie": cookie_from(login)})
    assert again.status_code == 303 and again.headers["location"] == "/session"


def test_wrong_input_re_shows_the_form_with_a_message(edge: EdgeServer) -> None:
    for user, password in (("admin", "not-it"), ("root", ADMIN_PASSWORD), ("", "")):
        response = post_login(edge.url, user, password, next_path="/x")
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        assert 'role="alert"' in response.text and "not right" in response.text
        assert 'value="/x"' in response.text
        assert ADMIN_PASSWORD not in response.text
    # What was typed as the user is shown back escaped, never as markup.
    response = post_login(edge.url, '<script>alert(1)</script>"', "x")
    assert "<script>alert(1)" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in response.text


def test_an_api_key_typed_as_the_password_logs_a_browser_in(edge: EdgeServer,
                                                            upstream: CaptureServer) -> None:
    key = edge.create_key("phone")
    cookie = login_cookie(edge.url, "anything", key)
    assert get(edge, "/session", {"Cookie": cookie}).status_code == 200


def test_the_way_back_never_leaves_the_edge(edge: EdgeServer) -> None:
    for sneaky in ("//evil.example/x", "/.//evil.example/x"):
        response = post_login(edge.url, "admin", ADMIN_PASSWORD, next_path=sneaky)
        assert response.status_code == 303 and response.headers["location"] == "/"


def test_a_login_page_address_with_many_query_fields_is_a_400(edge: EdgeServer) -> None:
    many = "&".join(f"a{n}=1" for n in range(20))
    response = get(edge, f"/_edge/login?{many}&next=%2Fsession", NAVIGATE)
    assert response.status_code == 400, response.text[:300]
    assert get(edge, "/_edge/login?next=%2Fsession&logged_out=1", NAVIGATE).status_code == 200


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:1", "null"])
def test_no_other_site_or_port_can_log_a_browser_in(edge: EdgeServer, origin: str) -> None:
    response = post_login(edge.url, "admin", ADMIN_PASSWORD, origin=origin)
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    cross_site = post_login(edge.url, "admin", ADMIN_PASSWORD,
                            headers={"Sec-Fetch-Site": "same-site"})
    assert cross_site.status_code == 403


def test_the_form_must_be_a_small_urlencoded_form(edge: EdgeServer) -> None:
    headers = FORM_POST | {"Origin": edge.url}
    with httpx.Client(base_url=edge.url, trust_env=False, timeout=30) as client:
        as_json = client.post("/_edge/login", json={"username": "admin"}, headers=headers)
        assert as_json.status_code == 415
        huge = client.post("/_edge/login", content=b"username=" + b"a" * 100_000,
                           headers=headers | {"Content-Type": "application/x-www-form-urlencoded"})
        assert huge.status_code == 413
        fields = "&".join(f"f{n}=1" for n in range(50))
        many = client.post("/_edge/login", content=fields.encode(),
                           headers=headers | {"Content-Type": "application/x-www-form-urlencoded"})
        assert many.status_code == 400
        put = client.put("/_edge/login", headers=headers)
        assert put.status_code == 405


def test_a_body_that_never_finishes_is_cut_off(edge: EdgeServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login_module, "FORM_DEADLINE", 0.5)
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"POST /_edge/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\nusername=adm")
        started = time.monotonic()
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert time.monotonic() - started < 5


# -- two-factor login -------------------------------------------------------------------


@pytest.fixture
def with_2fa(edge: EdgeServer, upstream: CaptureServer) -> str:
    """Turn 2FA on as ``ocedge admin totp enable`` does; the secret."""
    secret = totp.new_secret()
    backends = edge.edge.backends
    edge.run(enable_totp(backends.keys, backends.session_secret, secret,
                         totp.code_at(secret, time.time() - 30)))
    return secret


def test_with_2fa_the_form_asks_for_a_code_and_the_password_alone_fails(
        edge: EdgeServer, with_2fa: str) -> None:
    form = get(edge, "/_edge/login", NAVIGATE)
    assert 'name="code"' in form.text and 'autocomplete="one-time-code"' in form.text
    assert post_login(edge.url, "admin", ADMIN_PASSWORD).status_code == 401
    code = totp.code_at(with_2fa, time.time())
    wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
    assert post_login(edge.url, "admin", ADMIN_PASSWORD, code=wrong).status_code == 401
    response = post_login(edge.url, "admin", ADMIN_PASSWORD, code=f"{code[:3]} {code[3:]}")
    assert response.status_code == 303
    assert get(edge, "/session", {"Cookie": cookie_from(response)}).status_code == 200
    # The same code logs in once.
    assert post_login(edge.url, "admin", ADMIN_PASSWORD, code=code).status_code == 401
    # A right code with a wrong password is still wrong.
    later = totp.code_at(with_2fa, time.time() + 30)
    assert post_login(edge.url, "admin", "wrong-password", code=later).status_code == 401


def test_with_2fa_programs_must_use_an_api_key(edge: EdgeServer, with_2fa: str) -> None:
    basic = httpx.BasicAuth("admin", ADMIN_PASSWORD)
    with httpx.Client(base_url=edge.url, trust_env=False, timeout=30) as client:
        refused = client.get("/session", auth=basic)
        assert refused.status_code == 401
        assert refused.json()["error"] == "use_an_api_key"
        assert "API key" in refused.json()["message"]
        key = edge.create_key("cli")
        assert client.get("/session", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_turning_2fa_on_ends_the_sessions_opened_without_it(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    cookie = login_cookie(edge.url, "admin", ADMIN_PASSWORD)
    assert get(edge, "/session", {"Cookie": cookie}).status_code == 200
    secret = totp.new_secret()
    backends = edge.edge.backends
    edge.run(enable_totp(backends.keys, backends.session_secret, secret,
                         totp.code_at(secret, time.time())))
    assert get(edge, "/session", {"Cookie": cookie}).status_code == 401
