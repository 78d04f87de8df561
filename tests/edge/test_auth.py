"""Who gets through the edge: Basic for programs, API keys three ways, the session
cookie browsers get from the login page (HTTP, SSE and WebSocket), the failed-login
throttle, and the edge's own health and status paths. Secrets never come back in
an answer."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from infra import cli
from infra.interfaces import RUNNING, STOPPED
from tests.support.capture import CaptureServer, attach_upstream, running_capture
from tests.support.edge import ADMIN_PASSWORD, EdgeServer, make_settings, running_edge
from tests.support.login import FORM_POST, cookie_from, login_cookie, post_login

NEW_PASSWORD = "a-brand-new-admin-password-456"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


ADMIN = basic("admin", ADMIN_PASSWORD)


def call(edge: EdgeServer, path: str, method: str = "GET",
         headers: dict[str, str] | None = None) -> httpx.Response:
    """One request from a fresh client: no cookie jar carries over between calls."""
    with httpx.Client(base_url=edge.url, trust_env=False, timeout=10) as client:
        return client.request(method, path, headers=headers)


def admin_cookie(edge: EdgeServer) -> str:
    """The admin's session cookie, from the login page."""
    return login_cookie(edge.url, "admin", ADMIN_PASSWORD)


def assert_no_secret(response: httpx.Response, *secrets: str) -> None:
    seen = response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in secrets:
        assert secret not in seen, "a secret was sent back to the client"


def key_secret(key: str) -> str:
    return key.rsplit("_", 1)[1]


def key_id(key: str) -> str:
    return key.split("_")[1]


def cli_run(*argv: str) -> int:
    return cli.main(list(argv))


@pytest.fixture
def upstream(edge: EdgeServer) -> Iterator[CaptureServer]:
    with running_capture() as capture:
        attach_upstream(edge, capture.port)
        yield capture


# -- no credentials, Basic -------------------------------------------------------------


def test_no_credentials_gets_a_basic_challenge(edge: EdgeServer, upstream: CaptureServer) -> None:
    response = call(edge, "/session")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Basic realm="opencode-edge"')
    assert response.json()["error"] == "unauthorized"
    assert upstream.requests == [], "an unauthenticated request reached the container"


def test_admin_basic_login_is_forwarded(edge: EdgeServer, upstream: CaptureServer) -> None:
    response = call(edge, "/session", headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["path"] == "/session"
    assert upstream.last("/session").method == "GET"


@pytest.mark.parametrize(("user", "password"), [
    ("admin", "not-the-password"),
    ("admin", ADMIN_PASSWORD + "x"),
    ("root", ADMIN_PASSWORD),
    ("", ADMIN_PASSWORD),
])
def test_wrong_basic_credentials_are_refused(edge: EdgeServer, upstream: CaptureServer,
                                             user: str, password: str) -> None:
    response = call(edge, "/session", headers=basic(user, password))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Basic realm="opencode-edge"')
    assert_no_secret(response, ADMIN_PASSWORD, password)
    assert upstream.requests == []


# -- API keys --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["bearer", "x-api-key", "basic-password"])
def test_api_key_is_accepted_three_ways(edge: EdgeServer, upstream: CaptureServer,
                                        how: str) -> None:
    key = edge.create_key("sdk")
    headers = {
        "bearer": {"Authorization": f"Bearer {key}"},
        "x-api-key": {"X-API-Key": key},
        "basic-password": basic("any-user-name", key),
    }[how]
    response = call(edge, "/project", headers=headers)
    assert response.status_code == 200
    assert upstream.last("/project").method == "GET"


def _malformed_cases() -> list[tuple[str, str, str]]:
    return [
        ("basic-garbage-base64", "Authorization", "Basic !!!not*base64@@@"),
        ("basic-not-utf8", "Authorization", "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()),
        ("basic-without-colon", "Authorization",
         "Basic " + base64.b64encode(b"admin" + ADMIN_PASSWORD.encode()).decode()),
        ("basic-empty", "Authorization", "Basic"),
        ("bearer-empty", "Authorization", "Bearer"),
        ("bearer-prefix-only", "Authorization", "Bearer oce_"),
        ("bearer-empty-parts", "Authorization", "Bearer oce__"),
        ("unknown-scheme", "Authorization", "Digest username=admin"),
        ("x-api-key-empty", "X-API-Key", ""),
        ("x-api-key-not-a-key", "X-API-Key", "hello"),
        ("bearer-not-a-key", "Authorization", "Bearer hello world"),
    ]


@pytest.mark.parametrize(("case", "name", "value"), _malformed_cases(),
                         ids=[c[0] for c in _malformed_cases()])
def test_malformed_credentials_are_refused_never_500(edge: EdgeServer, upstream: CaptureServer,
                                                     case: str, name: str, value: str) -> None:
    response = call(edge, "/session", headers={name: value})
    assert response.status_code == 401, case
    assert response.json()["error"] == "unauthorized"
    assert upstream.requests == []


@pytest.mark.parametrize("case", ["wrong-secret", "unknown-id", "truncated", "extended",
                                  "wrong-prefix"])
def test_api_key_lookalikes_are_refused(edge: EdgeServer, upstream: CaptureServer,
                                        case: str) -> None:
    key = edge.create_key("real")
    other = edge.create_key("other")
    forged = {
        # Right shape, right id, someone else's secret.
        "wrong-secret": f"oce_{key_id(key)}_{key_secret(other)}",
        "unknown-id": f"oce_ZZZZZZZZZZZZ_{key_secret(key)}",
        "truncated": key[:-5],
        "extended": key + "A",
        "wrong-prefix": "ocx" + key[3:],
    }[case]
    for headers in ({"Authorization": f"Bearer {forged}"}, {"X-API-Key": forged},
                    basic("x", forged)):
        response = call(edge, "/session", headers=headers)
        assert response.status_code == 401, (case, headers)
        assert_no_secret(response, key_secret(key), key_secret(other))
    assert upstream.requests == []


def test_expired_key_is_refused(edge: EdgeServer, upstream: CaptureServer) -> None:
    key = edge.create_key("old", expires=time.time() - 60)
    response = call(edge, "/session", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert upstream.requests == []


def test_key_revoked_with_the_cli_stops_working(edge: EdgeServer, upstream: CaptureServer,
                                                state_dir: Path) -> None:
    key = edge.create_key("laptop")
    bearer = {"Authorization": f"Bearer {key}"}
    assert call(edge, "/session", headers=bearer).status_code == 200
    assert cli_run("keys", "revoke", key_id(key), "--state-dir", str(state_dir)) == 0
    response = call(edge, "/session", headers=bearer)
    assert response.status_code == 401
    assert_no_secret(response, key_secret(key))


# -- the failed-login throttle --------------------------------------------------------


def test_too_many_failures_get_429_even_with_the_right_password(state_dir: Path) -> None:
    with running_edge(make_settings(state_dir, auth_max_failures=3)) as edge:
        for _ in range(3):
            assert call(edge, "/_edge/status", headers=basic("admin", "wrong")).status_code == 401
        response = call(edge, "/_edge/status", headers=ADMIN)
        assert response.status_code == 429
        retry_after = response.headers["retry-after"]
        assert re.fullmatch(r"[1-9][0-9]*", retry_after), retry_after
        assert int(retry_after) <= 300
        assert response.json()["error"] == "too_many_failures"
        assert_no_secret(response, ADMIN_PASSWORD)
        # The login page says so too, with the same Retry-After.
        page = post_login(edge.url, "admin", ADMIN_PASSWORD)
        assert page.status_code == 429 and "Too many failed logins" in page.text
        assert "set-cookie" not in page.headers
        # A valid API key is never throttled, not even from the same address.
        key = edge.create_key("k")
        response = call(edge, "/_edge/status", headers={"X-API-Key": key})
        assert response.status_code == 200


def test_wrong_passwords_sent_at_once_get_no_more_tries_than_the_limit(
        state_dir: Path) -> None:
    """60 guesses on 60 connections at once, on the login page and over Basic: no
    more than the limit are checked; the rest get 429 (and so does the owner)."""
    async def burst(edge: EdgeServer) -> list[int]:
        async with httpx.AsyncClient(base_url=edge.url, trust_env=False, timeout=60,
                                     limits=httpx.Limits(max_connections=100)) as client:
            form = [client.post("/_edge/login", headers=FORM_POST | {"Origin": edge.url},
                                data={"username": "admin", "password": f"guess-{n}",
                                      "next": "/"}) for n in range(30)]
            basics = [client.get("/_edge/status", headers=basic("admin", f"basic-{n}"))
                      for n in range(30)]
            return [r.status_code for r in await asyncio.gather(*form, *basics)]

    with running_edge(make_settings(state_dir, auth_max_failures=10)) as edge:
        statuses = asyncio.run(burst(edge))
        assert set(statuses) <= {401, 429}, statuses
        assert statuses.count(401) <= 10, statuses
        assert call(edge, "/_edge/status", headers=ADMIN).status_code == 429


def test_throttle_is_per_client(state_dir: Path) -> None:
    # Behind a trusted proxy, which appends the client's address to X-Forwarded-For.
    settings = make_settings(state_dir, auth_max_failures=3, trust_forwarded=True)
    with running_edge(settings) as edge:
        attacker = {"X-Forwarded-For": "203.0.113.66"}
        for _ in range(3):
            assert call(edge, "/_edge/status",
                        headers=attacker | basic("admin", "guess")).status_code == 401
        assert call(edge, "/_edge/status", headers=attacker | ADMIN).status_code == 429
        # Someone else, at another address, still logs in.
        other = {"X-Forwarded-For": "198.51.100.7"}
        assert call(edge, "/_edge/status", headers=other | ADMIN).status_code == 200


def test_spoofed_forwarded_for_does_not_escape_the_throttle(state_dir: Path) -> None:
    # Without trust_forwarded the client address is the socket's, whatever X-Forwarded-For says.
    # Regression (fixed): uvicorn's default proxy_headers=True (infra/cli.py dev(), tests/support/edge.py)
    # rewrites the client address from X-Forwarded-For for loopback peers before the edge
    # sees it, so each spoofed address gets a fresh failure budget.
    with running_edge(make_settings(state_dir, auth_max_failures=3)) as edge:
        for n in range(3):
            headers = {"X-Forwarded-For": f"203.0.113.{n}"} | basic("admin", "guess")
            assert call(edge, "/_edge/status", headers=headers).status_code == 401
        headers = {"X-Forwarded-For": "198.51.100.99"} | ADMIN
        assert call(edge, "/_edge/status", headers=headers).status_code == 429


def test_a_success_resets_the_failure_count(state_dir: Path) -> None:
    with running_edge(make_settings(state_dir, auth_max_failures=3)) as edge:
        for _ in range(2):
            assert call(edge, "/_edge/status", headers=basic("admin", "typo")).status_code == 401
        assert call(edge, "/_edge/status", headers=ADMIN).status_code == 200
        for _ in range(2):
            assert call(edge, "/_edge/status", headers=basic("admin", "typo")).status_code == 401
        assert call(edge, "/_edge/status", headers=ADMIN).status_code == 200


# -- the session cookie (from the login page) ------------------------------------------


def test_the_login_page_sets_an_httponly_lax_cookie_without_secure_over_http(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    response = post_login(edge.url, "admin", ADMIN_PASSWORD, next_path="/session?x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/session?x=1"
    set_cookie = response.headers["set-cookie"]
    attributes = [part.strip().lower() for part in set_cookie.split(";")]
    assert set_cookie.startswith("ocedge_session=")
    assert len(cookie_from(response)) > len("ocedge_session=") + 20
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/" in attributes
    assert "max-age=43200" in attributes
    assert "secure" not in attributes
    assert_no_secret(response, ADMIN_PASSWORD)


@pytest.mark.parametrize("settings", [{"cookie_secure": "true"}, {"trust_forwarded": True}],
                         ids=["configured", "behind-a-trusted-https-proxy"])
def test_over_https_the_cookie_is_secure_and_host_prefixed(state_dir: Path,
                                                           settings: dict[str, object]) -> None:
    with running_edge(make_settings(state_dir, **settings)) as edge, \
            running_capture() as capture:
        attach_upstream(edge, capture.port)
        origin = "https://127.0.0.1:" + str(edge.port)
        response = post_login(edge.url, "admin", ADMIN_PASSWORD, origin=origin,
                              headers={"X-Forwarded-Proto": "https"})
        assert response.status_code == 303, response.text
        set_cookie = response.headers["set-cookie"]
        attributes = [part.strip().lower() for part in set_cookie.split(";")]
        assert set_cookie.startswith("__Host-ocedge_session=")
        assert "secure" in attributes and "path=/" in attributes
        assert not any(a.startswith("domain") for a in attributes)
        cookie = cookie_from(response)
        https = {"X-Forwarded-Proto": "https"}
        assert call(edge, "/session", headers=https | {"Cookie": cookie}).status_code == 200
        # The same value under the plain name (which any other host of the site could
        # set) does not count over HTTPS.
        plain = cookie.replace("__Host-", "")
        assert call(edge, "/session", headers=https | {"Cookie": plain}).status_code == 401


def test_non_browser_clients_get_no_cookie(edge: EdgeServer, upstream: CaptureServer) -> None:
    key = edge.create_key("cli")
    response = call(edge, "/session", headers={"Authorization": f"Bearer {key}",
                                               "User-Agent": "opencode/1.2"})
    assert response.status_code == 200
    assert "ocedge_session" not in response.headers.get("set-cookie", "")


def test_cookie_payload_holds_no_secret(edge: EdgeServer, upstream: CaptureServer) -> None:
    key = edge.create_key("browser")
    for password in (ADMIN_PASSWORD, key):
        cookie = login_cookie(edge.url, "admin", password)
        payload = cookie.split("=", 1)[1].split(".")[0]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
        assert ADMIN_PASSWORD not in decoded
        assert key_secret(key) not in decoded


def test_cookie_alone_authorises_http_sse_and_websocket(edge: EdgeServer,
                                                        upstream: CaptureServer) -> None:
    cookie = {"Cookie": admin_cookie(edge)}

    # Plain HTTP, as a background fetch would send it.
    response = call(edge, "/session", headers=cookie | {"Sec-Fetch-Mode": "cors",
                                                        "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 200
    assert response.json()["path"] == "/session"

    # EventSource.
    headers = cookie | {"Accept": "text/event-stream"}
    with httpx.Client(base_url=edge.url, trust_env=False, timeout=10) as client, \
            client.stream("GET", "/global/event?count=3&tag=cookie", headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        data = [line for line in stream.iter_lines() if line.startswith("data:")]
    assert [json.loads(line[5:])["n"] for line in data] == [0, 1, 2]

    # The terminal's WebSocket, from the edge's own page.
    with ws_connect(f"ws://127.0.0.1:{edge.port}/pty/x/connect",
                    additional_headers=cookie | {"Origin": edge.url},
                    proxy=None, open_timeout=5) as ws:
        ws.send("ls -la\n")
        assert ws.recv(timeout=5) == "ls -la\n"


def test_websocket_without_credentials_is_refused(edge: EdgeServer,
                                                  upstream: CaptureServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"ws://127.0.0.1:{edge.port}/pty/x/connect", proxy=None, open_timeout=5)
    assert refused.value.response.status_code in (401, 403)
    assert upstream.requests == []


def _tamper(cookie: str, where: str) -> str:
    value = cookie.split("=", 1)[1]
    payload, _, signature = value.partition(".")
    if where == "signature":
        signature = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    elif where == "payload":
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        data["e"] += 3600 * 24 * 365
        payload = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    elif where == "unsigned":
        signature = ""
    elif where == "unicode":
        signature = "é" + signature[1:]
    return f"ocedge_session={payload}.{signature}"


@pytest.mark.parametrize("where", ["signature", "payload", "unsigned", "unicode"])
def test_tampered_cookie_is_refused(edge: EdgeServer, upstream: CaptureServer, where: str) -> None:
    cookie = admin_cookie(edge)
    assert call(edge, "/session", headers={"Cookie": cookie}).status_code == 200
    response = call(edge, "/session", headers={"Cookie": _tamper(cookie, where).encode()})
    assert response.status_code == 401


def test_cookie_from_another_deployment_is_refused(edge: EdgeServer, upstream: CaptureServer,
                                                   tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with running_edge(make_settings(other_dir)) as other:
        foreign = admin_cookie(other)
    assert call(edge, "/session", headers={"Cookie": foreign}).status_code == 401


def test_expired_cookie_is_refused(state_dir: Path) -> None:
    with running_edge(make_settings(state_dir, session_ttl=2.0)) as edge, \
            running_capture() as capture:
        attach_upstream(edge, capture.port)
        login = post_login(edge.url, "admin", ADMIN_PASSWORD)
        assert "max-age=2" in login.headers["set-cookie"].lower()
        cookie = {"Cookie": cookie_from(login)}
        assert call(edge, "/session", headers=cookie).status_code == 200
        time.sleep(2.2)
        assert call(edge, "/session", headers=cookie).status_code == 401


def test_logging_out_ends_the_session_everywhere(edge: EdgeServer,
                                                 upstream: CaptureServer) -> None:
    cookie = {"Cookie": admin_cookie(edge)}
    laptop = {"Cookie": admin_cookie(edge)}
    assert call(edge, "/session", headers=laptop).status_code == 200
    # GET only shows the button (a link from elsewhere cannot log anyone out).
    page = call(edge, "/_edge/logout", headers=cookie)
    assert page.status_code == 200 and 'method="post"' in page.text
    assert call(edge, "/session", headers=cookie).status_code == 200

    response = call(edge, "/_edge/logout", "POST", headers=cookie | {"Origin": edge.url})
    assert response.status_code == 303
    assert response.headers["location"] == "/_edge/login?logged_out=1"
    set_cookie = response.headers["set-cookie"]
    attributes = [part.strip().lower() for part in set_cookie.split(";")]
    assert set_cookie.startswith("ocedge_session=;")
    assert "max-age=0" in attributes and "path=/" in attributes
    # The value a copy of the cookie still holds is dead, here and on the laptop.
    assert call(edge, "/session", headers=cookie).status_code == 401
    assert call(edge, "/session", headers=laptop).status_code == 401
    # Logging in again works.
    assert call(edge, "/session", headers={"Cookie": admin_cookie(edge)}).status_code == 200


def test_a_stranger_cannot_log_the_owner_out(edge: EdgeServer, upstream: CaptureServer) -> None:
    cookie = {"Cookie": admin_cookie(edge)}
    assert call(edge, "/_edge/logout", "POST", headers={"Origin": edge.url}).status_code == 303
    forged = {"Cookie": _tamper(cookie["Cookie"], "signature")}
    assert call(edge, "/_edge/logout", "POST", headers=forged).status_code == 303
    assert call(edge, "/session", headers=cookie).status_code == 200


def test_logout_all_from_the_cli_ends_every_session(edge: EdgeServer, upstream: CaptureServer,
                                                    state_dir: Path) -> None:
    cookie = {"Cookie": admin_cookie(edge)}
    key = edge.create_key("stays")
    assert call(edge, "/session", headers=cookie).status_code == 200
    assert cli_run("admin", "logout-all", "--state-dir", str(state_dir)) == 0
    assert call(edge, "/session", headers=cookie).status_code == 401
    # API keys are not sessions.
    assert call(edge, "/session", headers={"X-API-Key": key}).status_code == 200


def test_cookie_opened_with_a_key_ends_when_the_key_is_revoked(
        edge: EdgeServer, upstream: CaptureServer, state_dir: Path) -> None:
    key = edge.create_key("browser")
    cookie = {"Cookie": login_cookie(edge.url, "anyone", key)}
    assert call(edge, "/session", headers=cookie).status_code == 200
    assert cli_run("keys", "revoke", key_id(key), "--state-dir", str(state_dir)) == 0
    assert call(edge, "/session", headers=cookie).status_code == 401
    with pytest.raises(InvalidStatus):
        ws_connect(f"ws://127.0.0.1:{edge.port}/pty/x/connect", additional_headers=cookie,
                   proxy=None, open_timeout=5)


def test_changing_the_admin_password_ends_admin_cookies(
        edge: EdgeServer, upstream: CaptureServer, state_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cookie = {"Cookie": admin_cookie(edge)}
    assert call(edge, "/session", headers=cookie).status_code == 200

    monkeypatch.setattr("sys.stdin", io.StringIO(NEW_PASSWORD + "\n"))
    assert cli_run("admin", "password", "--state-dir", str(state_dir)) == 0

    assert call(edge, "/session", headers=cookie).status_code == 401
    assert call(edge, "/session", headers=ADMIN).status_code == 401
    assert call(edge, "/session", headers=basic("admin", NEW_PASSWORD)).status_code == 200


# -- the edge's own paths ------------------------------------------------------------


def test_health_needs_no_login_and_does_not_wake_the_container(edge: EdgeServer,
                                                               state_dir: Path) -> None:
    response = call(edge, "/_edge/health")
    assert response.status_code == 200
    assert response.json()["ok"] is True
    time.sleep(0.3)
    assert edge.run(edge.edge.backends.state.get()).status == STOPPED
    assert not (state_dir / "container.pid").exists()


def test_status_needs_a_login(edge: EdgeServer) -> None:
    response = call(edge, "/_edge/status")
    assert response.status_code == 401
    assert "status" not in response.json()


def test_status_reports_the_container_state(edge: EdgeServer, upstream: CaptureServer) -> None:
    response = call(edge, "/_edge/status", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == RUNNING
    assert isinstance(body["since"], int | float)
    assert abs(body["since"] - time.time()) < 60
    # The internal credential the container registered stays on the server.
    assert_no_secret(response, "internal-secret")


def test_status_of_a_sleeping_deployment(edge: EdgeServer) -> None:
    key = edge.create_key("status")
    response = call(edge, "/_edge/status", headers={"X-API-Key": key})
    assert response.status_code == 200
    assert response.json()["status"] == STOPPED
    assert "since" in response.json()


def test_unknown_edge_path_is_404_not_forwarded(edge: EdgeServer, upstream: CaptureServer) -> None:
    response = call(edge, "/_edge/nope", headers=ADMIN)
    assert response.status_code == 404
    assert upstream.requests == []
