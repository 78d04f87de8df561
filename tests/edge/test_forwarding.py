"""What the edge forwards to the container and back: credentials swapped for the
internal one, hop-by-hop headers dropped, X-Forwarded-* set by the edge, methods,
paths and bodies intact, event streams unbuffered, WebSockets both ways, and a
clear 502 when the container does not answer."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from infra.net import free_port
from tests.support.capture import (
    INTERNAL_SECRET,
    CaptureServer,
    attach_upstream,
    big_body,
    running_capture,
)
from tests.support.edge import ADMIN_PASSWORD, EdgeServer, make_settings, running_edge
from tests.support.login import login_cookie

BROWSER = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
           "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"}
ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}
INTERNAL_AUTH = "Basic " + base64.b64encode(f"opencode:{INTERNAL_SECRET}".encode()).decode()
MB = 1024 * 1024


def client(edge: EdgeServer, timeout: float = 30) -> httpx.Client:
    # A fresh client per use: no cookie jar carries over between requests.
    return httpx.Client(base_url=edge.url, trust_env=False, timeout=timeout)


def ws_url(edge: EdgeServer, path: str = "/pty/term1/connect") -> str:
    return f"ws://127.0.0.1:{edge.port}{path}"


@pytest.fixture
def upstream(edge: EdgeServer) -> Iterator[CaptureServer]:
    with running_capture() as capture:
        attach_upstream(edge, capture.port)
        yield capture


def _login_cookie(edge: EdgeServer) -> str:
    return login_cookie(edge.url, "admin", ADMIN_PASSWORD)


# -- credentials -------------------------------------------------------------------


def test_container_sees_the_internal_credential_not_the_clients(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    key = edge.create_key("sdk")
    secret = key.rsplit("_", 1)[1]
    headers = {"Authorization": f"Bearer {key}", "X-API-Key": key,
               "Proxy-Authorization": f"Basic {base64.b64encode(b'p:q').decode()}"}
    with client(edge) as c:
        assert c.get("/session", headers=headers).status_code == 200
    seen = upstream.last("/session")
    assert seen.header_values("authorization") == [INTERNAL_AUTH]
    assert "x-api-key" not in seen.header_names
    assert "proxy-authorization" not in seen.header_names
    assert all(secret not in value for _, value in seen.headers)


def test_admin_basic_is_replaced_by_the_internal_credential(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    with client(edge) as c:
        assert c.get("/config", headers=ADMIN).status_code == 200
    seen = upstream.last("/config")
    assert seen.header_values("authorization") == [INTERNAL_AUTH]
    assert all(ADMIN_PASSWORD not in value for _, value in seen.headers)


def test_session_cookie_is_dropped_other_cookies_pass(edge: EdgeServer,
                                                      upstream: CaptureServer) -> None:
    session = _login_cookie(edge)
    with client(edge) as c:
        cookie = f"theme=dark; {session}; lang=en-GB"
        response = c.get("/session", headers={"Cookie": cookie, "Sec-Fetch-Mode": "cors"})
    assert response.status_code == 200
    seen = upstream.last("/session")
    assert seen.header_values("cookie") == ["theme=dark; lang=en-GB"]
    assert seen.header_values("authorization") == [INTERNAL_AUTH]


def test_only_the_session_cookie_means_no_cookie_upstream(edge: EdgeServer,
                                                          upstream: CaptureServer) -> None:
    session = _login_cookie(edge)
    with client(edge) as c:
        assert c.get("/agent", headers={"Cookie": session}).status_code == 200
    assert "cookie" not in upstream.last("/agent").header_names


# -- headers the edge removes or sets ------------------------------------------------


def test_hop_by_hop_headers_are_not_forwarded(edge: EdgeServer, upstream: CaptureServer) -> None:
    headers = ADMIN | {
        "Connection": "keep-alive, X-Hop-Secret, X-Other-Hop",
        "Keep-Alive": "timeout=5, max=100",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic cHJveHk6cHJveHk=",
        "X-Hop-Secret": "for the next hop only",
        "X-Other-Hop": "1",
        "X-End-To-End": "kept",
    }
    with client(edge) as c:
        assert c.get("/session", headers=headers).status_code == 200
    names = upstream.last("/session").header_names
    for hop in ("connection", "keep-alive", "te", "upgrade", "proxy-authorization",
                "x-hop-secret", "x-other-hop"):
        assert hop not in names, f"{hop} was forwarded to the container"
    assert upstream.last("/session").header("x-end-to-end") == "kept"


def test_a_connection_header_cannot_remove_the_headers_the_edge_manages(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    """`Connection: close, host, authorization, x-forwarded-for` names headers the edge
    itself sets: they still reach the container, exactly once."""
    headers = ADMIN | {"Connection": "close, host, authorization, x-forwarded-for"}
    with client(edge) as c:
        assert c.get("/session", headers=headers).status_code == 200
    seen = upstream.last("/session")
    assert seen.header_values("host") == [f"127.0.0.1:{edge.port}"]
    assert len(seen.header_values("authorization")) == 1
    assert seen.header_values("x-forwarded-for") == ["127.0.0.1"]


def test_edge_sets_forwarded_headers(edge: EdgeServer, upstream: CaptureServer) -> None:
    with client(edge) as c:
        assert c.get("/session", headers=ADMIN).status_code == 200
    seen = upstream.last("/session")
    assert seen.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header_values("x-forwarded-proto") == ["http"]
    assert seen.header_values("x-forwarded-host") == [f"127.0.0.1:{edge.port}"]


def test_client_supplied_forwarded_headers_are_ignored(edge: EdgeServer,
                                                       upstream: CaptureServer) -> None:
    # Regression (fixed): infra/cli.py dev() (uvicorn.run) and tests/support/edge.py run uvicorn with its
    # default proxy_headers=True, so uvicorn itself rewrites the client address and scheme
    # from X-Forwarded-For/-Proto for loopback peers, whatever OCEDGE_TRUST_FORWARDED says.
    spoofed = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "evil.example", "Forwarded": "for=6.6.6.6",
               "X-Real-IP": "6.6.6.6"}
    with client(edge) as c:
        assert c.get("/session", headers=ADMIN | spoofed).status_code == 200
    seen = upstream.last("/session")
    assert seen.header_values("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header_values("x-forwarded-proto") == ["http"]
    assert seen.header_values("x-forwarded-host") == [f"127.0.0.1:{edge.port}"]
    assert "forwarded" not in seen.header_names
    assert "x-real-ip" not in seen.header_names


def test_forwarded_for_is_extended_behind_a_trusted_proxy(state_dir: Path) -> None:
    with running_edge(make_settings(state_dir, trust_forwarded=True)) as edge, \
            running_capture() as capture:
        attach_upstream(edge, capture.port)
        with client(edge) as c:
            response = c.get("/session", headers=ADMIN | {"X-Forwarded-For": "203.0.113.5"})
        assert response.status_code == 200
        forwarded_for = capture.last("/session").header_values("x-forwarded-for")
        assert len(forwarded_for) == 1
        assert forwarded_for[0].split(",")[0].strip() == "203.0.113.5"


def test_upstream_auth_challenge_is_not_passed_to_the_client(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    with client(edge) as c:
        response = c.get("/challenge", headers=ADMIN)
    assert response.status_code == 401
    assert "www-authenticate" not in response.headers


def test_origin_reaches_the_container_so_it_can_check_it_too(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    own = edge.url
    with client(edge) as c:
        response = c.post("/session", json={}, headers=ADMIN | {"Origin": own})
    assert response.status_code == 200
    assert upstream.last("/session").header_values("origin") == [own]
    with ws_connect(ws_url(edge), additional_headers=ADMIN, origin=own,
                    proxy=None, open_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
    assert upstream.last("/pty/term1/connect").header_values("origin") == [own]


@pytest.mark.parametrize("target", [b"*", b"http://127.0.0.1:1/session"])
def test_a_target_that_is_not_a_path_gets_a_400_and_never_reaches_the_container(
        edge: EdgeServer, upstream: CaptureServer, target: bytes) -> None:
    import socket

    before = len(upstream.requests)
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as raw:
        raw.sendall(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:"
                    + str(edge.port).encode() + b"\r\nAuthorization: "
                    + ADMIN["Authorization"].encode() + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400") or (
        target.startswith(b"http") and status.startswith(b"HTTP/1.1 200")), answer[:300]
    if status.startswith(b"HTTP/1.1 400"):
        assert len(upstream.requests) == before
    else:
        # An absolute-form target is reduced to its path: the container's address
        # comes from the state store, never from the request.
        assert upstream.last().raw_path == "/session"


# -- methods, paths, bodies ----------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_method_path_query_and_body_are_preserved(edge: EdgeServer, upstream: CaptureServer,
                                                  method: str) -> None:
    raw_path = "/file/content/a%20b%2Fc%3Fd%23e%25f.txt"
    query = "path=src%2Fmain.py&q=a+b&tick=%E2%9C%93&empty=&flag&rep=1&rep=2"
    body = json.dumps({"title": "héllo wörld", "n": 1}).encode() if method != "GET" else b""
    with client(edge) as c:
        response = c.request(method, f"{raw_path}?{query}", content=body or None,
                             headers=ADMIN | {"Content-Type": "application/json"})
    assert response.status_code == 200
    seen = upstream.last()
    assert seen.method == method
    assert seen.raw_path == raw_path
    assert seen.path == "/file/content/a b/c?d#e%f.txt"
    assert seen.query == query
    assert seen.body == body
    assert seen.header("content-type") == "application/json"


def test_the_edge_frames_the_body_itself(edge: EdgeServer, upstream: CaptureServer) -> None:
    with client(edge) as c:
        assert c.post("/empty", content=b"", headers=ADMIN).status_code == 200
        assert c.post("/sized", content=b"abc", headers=ADMIN).status_code == 200
        assert c.post("/chunked", content=iter([b"ab", b"c"]), headers=ADMIN).status_code == 200
    empty, sized, chunked = (upstream.last(p) for p in ("/empty", "/sized", "/chunked"))
    assert empty.header_values("content-length") == ["0"] and empty.body == b""
    assert sized.header_values("content-length") == ["3"] and sized.body == b"abc"
    assert "transfer-encoding" not in sized.header_names
    assert chunked.header_values("transfer-encoding") == ["chunked"] and chunked.body == b"abc"
    assert "content-length" not in chunked.header_names


def _generated(size: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        yield bytes((sent // chunk + i) % 251 for i in range(256)) * (n // 256) + b"x" * (n % 256)
        sent += n


def test_large_streamed_request_body_reaches_the_container(edge: EdgeServer,
                                                           upstream: CaptureServer) -> None:
    size = 20 * MB
    digest = hashlib.sha256()
    for chunk in _generated(size):
        digest.update(chunk)
    with client(edge, timeout=60) as c:
        response = c.post("/upload", content=_generated(size),
                          headers=ADMIN | {"Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    seen = upstream.last("/upload")
    assert seen.body_size == size
    assert seen.body_sha256 == digest.hexdigest()


def test_large_request_body_with_length_reaches_the_container(edge: EdgeServer,
                                                              upstream: CaptureServer) -> None:
    body = b"".join(_generated(5 * MB))
    with client(edge, timeout=60) as c:
        response = c.put("/upload", content=body, headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["body_size"] == len(body)
    assert upstream.last("/upload").body_sha256 == hashlib.sha256(body).hexdigest()


def test_large_response_body_streams_through(edge: EdgeServer, upstream: CaptureServer) -> None:
    size = 20 * MB
    expected = hashlib.sha256()
    for chunk in big_body(size):
        expected.update(chunk)
    received = hashlib.sha256()
    total = 0
    with client(edge, timeout=60) as c, \
            c.stream("GET", f"/big?size={size}", headers=ADMIN) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(size)
        for chunk in response.iter_raw():
            received.update(chunk)
            total += len(chunk)
    assert total == size
    assert received.hexdigest() == expected.hexdigest()


def test_slow_chunked_body_is_not_buffered(edge: EdgeServer, upstream: CaptureServer) -> None:
    arrivals: list[tuple[str, float]] = []
    with client(edge) as c, c.stream("GET", "/slow?count=5&interval=0.3",
                                     headers=ADMIN) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                arrivals.append((line, time.monotonic()))
    assert [line for line, _ in arrivals] == [f"chunk {n}" for n in range(5)]
    emitted = dict(upstream.slow_emitted)
    # The first chunk is in the client's hands long before the upstream produced the last.
    assert arrivals[0][1] < emitted[4] - 0.5
    for n, (_, at) in enumerate(arrivals):
        assert at - emitted[n] < 0.25, f"chunk {n} was held back {at - emitted[n]:.2f}s"


# -- server-sent events --------------------------------------------------------------


def test_events_arrive_one_by_one(edge: EdgeServer, upstream: CaptureServer) -> None:
    arrivals: list[tuple[int, float]] = []
    headers = ADMIN | {"Accept": "text/event-stream"}
    start = time.monotonic()
    with client(edge) as c, c.stream("GET", "/global/event?count=20&interval=0.1&tag=timing",
                                     headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append((json.loads(line[5:])["n"], time.monotonic()))
    assert [n for n, _ in arrivals] == list(range(20))
    emitted = dict(upstream.emitted["timing"])
    # The first event arrives well before the stream ends (~1.9 s)...
    assert arrivals[0][1] - start < 1.0
    assert arrivals[0][1] < emitted[19]
    # ...each within a second of being emitted...
    for n, at in arrivals:
        assert at - emitted[n] < 1.0, f"event {n} arrived {at - emitted[n]:.2f}s late"
    # ...and spaced as they were sent, not delivered in one burst.
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(arrivals)]
    assert 0.05 < statistics.median(gaps) < 0.2
    assert arrivals[-1][1] - arrivals[0][1] > 1.4


def test_closing_the_event_stream_reaches_the_container(edge: EdgeServer,
                                                        upstream: CaptureServer) -> None:
    headers = ADMIN | {"Accept": "text/event-stream"}
    seen = 0
    with client(edge) as c, c.stream("GET", "/global/event?count=1000&tag=leave",
                                     headers=headers) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen == 2:
                    break
    assert upstream.wait_for(lambda: upstream.sse_outcomes.get("leave") == "cancelled", 3), \
        "the container kept streaming to a client that had gone"
    emitted = len(upstream.emitted["leave"])
    time.sleep(0.4)
    assert len(upstream.emitted["leave"]) == emitted


# -- WebSockets ----------------------------------------------------------------------


def test_websocket_messages_round_trip(edge: EdgeServer, upstream: CaptureServer) -> None:
    with ws_connect(ws_url(edge), additional_headers=ADMIN, proxy=None, open_timeout=5,
                    max_size=None) as ws:
        ws.send("echo hello\r")
        assert ws.recv(timeout=5) == "echo hello\r"
        ws.send(b"\x00\x01\x02\xff binary \x1b[31m")
        assert ws.recv(timeout=5) == b"\x00\x01\x02\xff binary \x1b[31m"
        big = bytes(range(256)) * 4096  # 1 MiB frame
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.send("ünïcødé ✓")
        assert ws.recv(timeout=5) == "ünïcødé ✓"
    handshake = upstream.last("/pty/term1/connect")
    assert handshake.method == "WEBSOCKET"
    assert handshake.header_values("authorization") == [INTERNAL_AUTH]
    assert all(ADMIN_PASSWORD not in value for _, value in handshake.headers)


def test_websocket_query_and_cookie_auth_reach_the_container(
        edge: EdgeServer, upstream: CaptureServer) -> None:
    session = _login_cookie(edge)
    url = ws_url(edge, "/pty/abc/connect?directory=%2Fwork%2Fmy%20app&cursor=0")
    with ws_connect(url, additional_headers={"Cookie": f"{session}; theme=dark"},
                    proxy=None, open_timeout=5) as ws:
        ws.send("pwd\r")
        assert ws.recv(timeout=5) == "pwd\r"
    handshake = upstream.last("/pty/abc/connect")
    assert handshake.query == "directory=%2Fwork%2Fmy%20app&cursor=0"
    assert handshake.header_values("cookie") == ["theme=dark"]
    assert handshake.header_values("authorization") == [INTERNAL_AUTH]


def test_client_close_reaches_the_container(edge: EdgeServer, upstream: CaptureServer) -> None:
    with ws_connect(ws_url(edge), additional_headers=ADMIN, proxy=None, open_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        ws.close(code=4000, reason="tab closed")
    assert upstream.wait_for(lambda: bool(upstream.ws_closes), 3), \
        "the container never saw the client leave"
    assert upstream.ws_closes == [("client", 4000)]


def test_container_close_reaches_the_client(edge: EdgeServer, upstream: CaptureServer) -> None:
    with ws_connect(ws_url(edge), additional_headers=ADMIN, proxy=None, open_timeout=5) as ws:
        ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001
    assert upstream.ws_closes == [("server", 4001)]


def test_websocket_ignores_the_process_proxy_settings(
        edge: EdgeServer, upstream: CaptureServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (fixed): edge/proxy.py forward_websocket calls websockets' connect() without proxy=None,
    # so HTTP(S)_PROXY in the edge's environment reroutes the edge→container WebSocket
    # (the HTTP forwarder uses trust_env=False): the terminal breaks while HTTP works.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with client(edge) as c:
        assert c.get("/session", headers=ADMIN).status_code == 200
    with ws_connect(ws_url(edge), additional_headers=ADMIN, proxy=None, open_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"


# -- the container does not answer ---------------------------------------------------


def test_unreachable_container_gets_a_fast_clear_502(edge: EdgeServer) -> None:
    attach_upstream(edge, free_port())  # nothing listens there
    start = time.monotonic()
    with client(edge) as c:
        response = c.get("/session", headers=ADMIN)
    elapsed = time.monotonic() - start
    assert response.status_code == 502
    assert elapsed < 2.0
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "upstream_unavailable"
    assert "container" in body["message"].lower()
    assert INTERNAL_SECRET not in response.text


def test_unreachable_container_shows_browsers_an_html_page(edge: EdgeServer) -> None:
    attach_upstream(edge, free_port())
    cookie = _login_cookie(edge)
    start = time.monotonic()
    with client(edge) as c:
        response = c.get("/L3dvcmsvYXBw/session", headers=BROWSER | {"Cookie": cookie,
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"})
    assert time.monotonic() - start < 2.0
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()
    assert "did not answer" in response.text
