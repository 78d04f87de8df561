"""The terminal listener (container/terminal.py), CloudFront's origin for /pty/*/connect.

Against a recording WebSocket server in opencode's place (websockets' sans-I/O protocol
over a plain socket, so every handshake header and every frame, pings included, is
seen): every refusal is a 4xx that reaches nothing; what does reach it; messages, close
codes and pings both ways. Against the real opencode: a typed command's output comes
back, no refusal spends the single-use ticket, and ``python -m container`` starts the
listener when OCEDGE_TERMINAL_PORT is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Origin
from websockets.uri import parse_uri

from container.terminal import TerminalListener
from container.watcher import KeepAlive
from infra.backends import backends_for_tools
from infra.cloudfront import sign_ticket
from infra.deadline import Deadline
from infra.interfaces import Status
from infra.lifecycle import Lifecycle
from infra.net import free_port
from infra.settings import Settings
from tests.support.container import container
from tests.support.edge import make_settings
from tests.support.memory import MemoryStateStore
from tests.support.opencode import OpencodeHandle, start_opencode
from tests.support.raw_http import send_raw

SECRET = secrets.token_urlsafe(32)
VIEWER = "d111abcdef8.cloudfront.net"
ORIGIN = f"https://{VIEWER}"
PASSWORD = "terminal-test-password"
PTY = "pty_test1"


# -- the listener, a browser and a recording opencode ----------------------------------


class RecordingOpencode:
    """A WebSocket server in opencode's place. It records each handshake and every frame
    it receives, echoes messages back, and closes with code N when sent ``close:N``;
    with ``status`` set, it refuses every handshake with that status; with ``delay``, it
    answers handshakes that late. ``ended`` counts the connections that are over."""

    def __init__(self, status: int = 101, delay: float = 0) -> None:
        self.status = status
        self.delay = delay
        self.ended = 0
        self.handshakes: list[Request] = []
        self.frames: list[Frame] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> RecordingOpencode:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def received(self, opcode: Opcode) -> list[Frame]:
        return [frame for frame in self.frames if frame.opcode == opcode]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = ServerProtocol(max_size=None)
        try:
            while data := await reader.read(65536):
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if isinstance(event, Request):
                        self.handshakes.append(event)
                        await asyncio.sleep(self.delay)
                        protocol.send_response(protocol.accept(event) if self.status == 101
                                               else protocol.reject(self.status, "refused\n"))
                        continue
                    assert isinstance(event, Frame)
                    self.frames.append(event)
                    if event.opcode == Opcode.TEXT and event.data.startswith(b"close:"):
                        protocol.send_close(int(event.data[6:]), "opencode closed")
                    elif event.opcode == Opcode.TEXT:
                        protocol.send_text(event.data)
                    elif event.opcode == Opcode.BINARY:
                        protocol.send_binary(event.data)
                for out in protocol.data_to_send():
                    if out:
                        writer.write(out)
                    elif writer.can_write_eof():
                        writer.write_eof()
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.ended += 1
            writer.close()


@dataclass
class Listening:
    listener: TerminalListener
    port: int


@contextlib.asynccontextmanager
async def listening(upstream_port: int, **options: Any) -> AsyncIterator[Listening]:
    listener = TerminalListener(SECRET, upstream_port, **options)
    port = await listener.start("127.0.0.1", 0)
    try:
        yield Listening(listener, port)
    finally:
        await listener.close()


@contextlib.asynccontextmanager
async def recorded(status: int = 101, delay: float = 0, **options: Any
                   ) -> AsyncIterator[tuple[Listening, RecordingOpencode]]:
    upstream = await RecordingOpencode(status, delay).start()
    try:
        async with listening(upstream.port, **options) as listener:
            yield listener, upstream
    finally:
        await upstream.close()


def signed(ticket: str, pty: str = PTY, location: list[tuple[str, str]] | None = None,
           now: float | None = None) -> str:
    """``ticket`` as the edge hands it to the browser (edge/terminal_tickets.py)."""
    return sign_ticket(SECRET, ticket, pty, location or [], now)


def browser(port: int, pty: str = PTY, ticket: str = "T1",
            headers: dict[str, str] | None = None, sign: bool = True) -> connect:
    """The browser's WebSocket to the listener on ``port``, as CloudFront sends it on,
    with opencode's ``ticket`` as the edge signed it (unless not ``sign``)."""
    return connect(
        f"ws://127.0.0.1:{port}/pty/{pty}/connect?ticket="
        + quote(signed(ticket, pty) if sign else ticket, safe=""),
        origin=Origin(ORIGIN), additional_headers={
            "x-ocedge-origin-secret": SECRET, "x-ocedge-viewer-host": VIEWER, **(headers or {})},
        proxy=None, open_timeout=10)


async def eventually(condition: Callable[[], object], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("never happened")
        await asyncio.sleep(0.02)


def handshake(pty: str, ticket: str, *, method: str = "GET", path: str | None = None,
              query: str | None = None, secrets_: list[str] | None = None,
              viewers: list[str] | None = None, origins: list[str] | None = None,
              upgrade: bool = True, version: str = "13", body: bytes = b"",
              http: str = "HTTP/1.1", sign: bool = True, signed_for: str | None = None,
              location: list[tuple[str, str]] | None = None) -> bytes:
    """A request head (and body) exactly as written; by default a good handshake, with
    ``ticket`` signed by the edge for ``signed_for`` (default: this pty) and ``location``."""
    if sign:
        ticket = quote(signed(ticket, signed_for or pty, location), safe="")
    target = (path or f"/pty/{pty}/connect") + "?" + (
        f"ticket={ticket}" if query is None else query.format(t=ticket))
    lines = [f"{method} {target} {http}", "Host: 10.0.1.23:8081"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade",
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                  f"Sec-WebSocket-Version: {version}"]
    lines += [f"x-ocedge-origin-secret: {s}" for s in ([SECRET] if secrets_ is None else secrets_)]
    lines += [f"x-ocedge-viewer-host: {v}" for v in ([VIEWER] if viewers is None else viewers)]
    lines += [f"Origin: {o}" for o in ([ORIGIN] if origins is None else origins)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# Each refusal: how the request differs from a good handshake, and the status it gets.
REFUSALS: dict[str, tuple[dict[str, Any], int]] = {
    "no secret": ({"secrets_": []}, 403),
    "a wrong secret": ({"secrets_": ["W" * 43]}, 403),
    "two secret headers": ({"secrets_": [SECRET, SECRET]}, 403),
    "a wrong then the right secret": ({"secrets_": ["W" * 43, SECRET]}, 403),
    "no ticket": ({"query": "directory=%2Fwork"}, 401),
    "an empty ticket": ({"query": "ticket="}, 401),
    "two tickets": ({"query": "ticket={t}&ticket={t}"}, 401),
    "a ticket the edge did not sign": ({"sign": False}, 401),
    "a ticket with a non-ASCII expiry": ({"sign": False, "query": "ticket=T1.%C2%B2.AAAA"}, 401),
    "a ticket signed for another terminal": ({"signed_for": "pty_other"}, 401),
    "a directory the ticket was not signed for": ({"query": "ticket={t}&directory=%2Ftmp"}, 401),
    "a workspace the ticket was not signed for": ({"query": "ticket={t}&workspace=wrk_1"}, 401),
    "a ticket signed for another directory": (
        {"query": "ticket={t}&directory=%2Ftmp", "location": [("directory", "/work")]}, 401),
    "a foreign Origin": ({"origins": ["https://evil.example"]}, 403),
    "the right host over http": ({"origins": [f"http://{VIEWER}"]}, 403),
    "the right host on another port": ({"origins": [f"https://{VIEWER}:8443"]}, 403),
    "no Origin": ({"origins": []}, 403),
    "two Origins": ({"origins": [ORIGIN, ORIGIN]}, 403),
    "Origin null": ({"origins": ["null"]}, 403),
    "no viewer host": ({"viewers": []}, 400),
    "two viewer hosts": ({"viewers": [VIEWER, VIEWER]}, 400),
    "a malformed viewer host": ({"viewers": ["evil.example/x"]}, 400),
    "path /": ({"path": "/"}, 404),
    "path /pty/x/connect-token": ({"path": "/pty/x/connect-token"}, 404),
    "path /session": ({"path": "/session"}, 404),
    "path /pty/x/connect/extra": ({"path": "/pty/x/connect/extra"}, 404),
    "path /api/pty/x/connect": ({"path": "/api/pty/x/connect"}, 404),
    "path /pty/x/connect/": ({"path": "/pty/x/connect/"}, 404),
    "path /pty/../connect": ({"path": "/pty/../connect"}, 404),
    "a plain HTTP GET": ({"upgrade": False}, 426),
    "an old WebSocket version": ({"version": "8"}, 400),
    "HTTP/1.0": ({"http": "HTTP/1.0"}, 400),
    "POST": ({"method": "POST"}, 405),
    "POST with a body": ({"method": "POST", "body": b"echo pwned\r"}, 405),
    "HEAD": ({"method": "HEAD"}, 405),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", REFUSALS)
def test_every_refusal_is_a_4xx_that_reaches_nothing(case: str) -> None:
    changes, status = REFUSALS[case]

    async def scenario() -> None:
        async with recorded() as (terminal, upstream):
            answer = await send_raw(terminal.port,
                                    handshake(PTY, "T1", **changes), timeout=5)
            assert answer.status == status, answer.data
            head, _, body = answer.data.partition(b"\r\n\r\n")
            assert b"content-type: application/json" in head.lower()
            assert json.loads(body)["message"]
            assert SECRET.encode() not in answer.data
            await asyncio.sleep(0.05)
            assert upstream.handshakes == [], "a refused request reached opencode"

    asyncio.run(scenario())


@pytest.mark.unit
def test_a_refusal_is_logged_without_header_values(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with recorded() as (terminal, _):
            wrong = "Z" * 43
            await send_raw(terminal.port,
                           handshake(PTY, "T1", secrets_=[wrong]), timeout=5)
            await send_raw(terminal.port,
                           handshake(PTY, "T1", origins=["https://evil.example"]), timeout=5)

    with caplog.at_level("DEBUG"):
        asyncio.run(scenario())
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "refused 403" in logged
    for value in (SECRET, "Z" * 43, "evil.example", VIEWER, "T1"):
        assert value not in logged


@pytest.mark.unit
def test_opencode_gets_the_viewer_host_and_the_origin_and_no_credential() -> None:
    async def scenario() -> Request:
        async with recorded() as (terminal, upstream):
            client_headers = {"Cookie": "ocedge_session=stolen", "Authorization": "Basic ZWRnZQ==",
                              "X-Forwarded-For": "203.0.113.9",
                              "x-ocedge-viewer-address": "203.0.113.9",
                              "User-Agent": "Mozilla/5.0", "X-Api-Key": "oce_x_y"}
            async with browser(terminal.port, headers=client_headers) as ws:
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), 5) == "hello"
            return upstream.handshakes[0]

    request = asyncio.run(scenario())
    headers = request.headers
    assert headers.get_all("Host") == [VIEWER]
    assert headers.get_all("Origin") == [ORIGIN]
    # No credential at all: the ticket is the only key (opencode would take its own
    # credential instead of a ticket).
    assert headers.get_all("Authorization") == []
    names = {name.lower() for name in headers}
    assert names <= {"host", "origin", "upgrade", "connection",
                     "sec-websocket-key", "sec-websocket-version"}, names
    assert request.path == f"/pty/{PTY}/connect?ticket=T1"


@pytest.mark.unit
def test_the_public_url_is_an_origin_too() -> None:
    public = "https://code.example.com"

    async def scenario() -> list[int | None]:
        async with recorded(public_url=public + "/") as (terminal, upstream):
            statuses = [(await send_raw(terminal.port, handshake(PTY, "T1", origins=[o]),
                                        timeout=5)).status
                        for o in (public, ORIGIN, "https://other.example.com")]
            assert [r.headers["Origin"] for r in upstream.handshakes] == [public, ORIGIN]
            return statuses

    assert asyncio.run(scenario()) == [101, 101, 403]


@pytest.mark.unit
def test_opencode_reads_the_very_ticket_that_was_checked() -> None:
    """A query two parsers could read differently (here a '#', which ends a URL's query
    for opencode's parser) reaches opencode re-encoded: opencode's own ticket (not the
    signed one), the signed location and the cursor, nothing else."""
    async def scenario() -> list[str]:
        async with recorded() as (terminal, upstream):
            for query, location in (
                    ("x=1#&ticket={t}&cursor=-1", None),
                    ("directory=%2Fwork%2Fmy%20app&ticket={t}&location%5Bdirectory%5D=%2Ftmp"
                     "&cursor=12&other=1", [("directory", "/work/my app")]),
                    ("ticket={t}&cursor=;rm", None)):
                answer = await send_raw(terminal.port, handshake(
                    PTY, "T1", query=query, location=location), timeout=5)
                assert answer.status == 101, (query, answer.data)
            return [h.path for h in upstream.handshakes]

    assert asyncio.run(scenario()) == [
        f"/pty/{PTY}/connect?ticket=T1&cursor=-1",
        f"/pty/{PTY}/connect?ticket=T1&directory=%2Fwork%2Fmy+app&cursor=12",
        f"/pty/{PTY}/connect?ticket=T1"]


@pytest.mark.unit
def test_an_expired_ticket_is_refused_and_reaches_nothing() -> None:
    async def scenario() -> int:
        async with recorded() as (terminal, upstream):
            stale = quote(signed("T1", now=time.time() - 300), safe="")
            answer = await send_raw(terminal.port, handshake(PTY, stale, sign=False), timeout=5)
            assert not upstream.handshakes
            return answer.status

    assert asyncio.run(scenario()) == 401


@pytest.mark.unit
def test_messages_pass_both_ways_as_text_or_binary() -> None:
    async def scenario() -> None:
        async with recorded() as (terminal, upstream), browser(terminal.port) as ws:
            await ws.send("ls -l\r")
            assert await asyncio.wait_for(ws.recv(), 5) == "ls -l\r"
            await ws.send(b"\x00{\"cursor\":3}")
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00{\"cursor\":3}"
            assert [f.data for f in upstream.received(Opcode.TEXT)] == [b"ls -l\r"]

    asyncio.run(scenario())


@pytest.mark.unit
def test_typing_in_the_terminal_is_activity_and_opencodes_output_is_not() -> None:
    typed: list[float] = []

    async def scenario() -> None:
        async with recorded() as (terminal, _), browser(terminal.port) as ws:
            terminal.listener.on_activity = lambda: typed.append(time.monotonic())
            await ws.send("ls\r")
            assert await asyncio.wait_for(ws.recv(), 5) == "ls\r"  # echoed by the fake
            await ws.send("pwd\r")
            assert await asyncio.wait_for(ws.recv(), 5) == "pwd\r"

    asyncio.run(scenario())
    assert len(typed) == 2  # the two keystroke messages; not the two echoes


@pytest.mark.unit
def test_terminal_activity_renews_the_idle_deadline_at_most_once_per_5_percent() -> None:
    store = MemoryStateStore()
    base = time.time() + 1000  # later than the deadline registering sets
    now = [base]
    lifecycle = Lifecycle(store, owner="container:test")

    async def scenario() -> list[float | None]:
        state = await lifecycle.register_running("127.0.0.1:1", "pw", None, 100)
        keepalive = KeepAlive("http://127.0.0.1:1", httpx.BasicAuth("opencode", "pw"),
                              lifecycle, state.generation,
                              Deadline(store, 100, "container:test"), clock=lambda: now[0])
        seen = []
        for later in (0.0, 1.0, 10.0):  # 1 s later: under 5% of 100 s; 10 s: over
            now[0] = base + later
            keepalive.activity()
            await asyncio.sleep(0.05)
            seen.append(store.item.deadline)
        return seen

    assert asyncio.run(scenario()) == [base + 100, base + 100, base + 110]
    assert [w.kind for w in store.writes].count("deadline") == 2


@pytest.mark.unit
def test_a_close_from_opencode_reaches_the_browser_with_its_code() -> None:
    async def scenario() -> None:
        async with recorded() as (terminal, _), browser(terminal.port) as ws:
            await ws.send("close:4001")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "opencode closed")

    asyncio.run(scenario())


@pytest.mark.unit
def test_a_close_from_the_browser_reaches_opencode_with_its_code() -> None:
    async def scenario() -> None:
        async with recorded() as (terminal, upstream):
            async with browser(terminal.port) as ws:
                await ws.close(4002, "tab closed")
            await eventually(lambda: upstream.received(Opcode.CLOSE))
            close = upstream.received(Opcode.CLOSE)
            assert close and close[0].data == (4002).to_bytes(2, "big") + b"tab closed"

    asyncio.run(scenario())


@pytest.mark.unit
def test_closing_the_listener_closes_both_sides_as_going_away() -> None:
    async def scenario() -> None:
        async with recorded() as (terminal, upstream), browser(terminal.port) as ws:
            await terminal.listener.close()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            await eventually(lambda: upstream.received(Opcode.CLOSE))
            close = upstream.received(Opcode.CLOSE)
            assert close and close[0].data[:2] == (1001).to_bytes(2, "big")

    asyncio.run(scenario())


@pytest.mark.unit
def test_a_message_over_the_cap_closes_the_terminal_and_is_not_relayed() -> None:
    async def scenario() -> None:
        async with recorded() as (terminal, upstream), browser(terminal.port) as ws:
            await ws.send("x" * ((1 << 20) + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            await eventually(lambda: upstream.received(Opcode.CLOSE))
            assert upstream.received(Opcode.TEXT) == []
            assert upstream.received(Opcode.CLOSE)[0].data[:2] == (1009).to_bytes(2, "big")

    asyncio.run(scenario())


@pytest.mark.unit
def test_opencodes_refusal_is_passed_on_and_a_silent_opencode_is_a_502() -> None:
    async def scenario() -> None:
        async with recorded(status=403) as (terminal, upstream):
            answer = await send_raw(terminal.port,
                                    handshake(PTY, "used"), timeout=5)
            assert answer.status == 403 and len(upstream.handshakes) == 1
        async with listening(free_port()) as terminal:  # nothing listens there
            answer = await send_raw(terminal.port,
                                    handshake(PTY, "T1"), timeout=5)
            assert answer.status == 502

    asyncio.run(scenario())


@pytest.mark.unit
def test_opencodes_side_is_closed_when_the_client_leaves_during_the_handshake() -> None:
    async def scenario() -> None:
        async with recorded(delay=0.3) as (terminal, upstream):
            _, writer = await asyncio.open_connection("127.0.0.1", terminal.port)
            writer.write(handshake(PTY, "T1"))
            await writer.drain()
            await eventually(lambda: upstream.handshakes)
            writer.close()  # before opencode answered
            await eventually(lambda: upstream.ended == 1)

    asyncio.run(scenario())


@pytest.mark.unit
def test_opencodes_side_is_closed_when_the_listener_closes_during_the_handshake() -> None:
    async def scenario() -> None:
        async with recorded(delay=0.3) as (terminal, upstream):
            answer = asyncio.ensure_future(send_raw(terminal.port, handshake(PTY, "T1")))
            await eventually(lambda: upstream.handshakes)
            await terminal.listener.close()  # before opencode answered
            assert (await answer).status == 503
            await eventually(lambda: upstream.ended == 1)

    asyncio.run(scenario())


async def _raw_browser(port: int, seconds: float) -> list[Frame]:
    """The frames a browser receives in ``seconds`` on an open terminal (answering
    pings as a browser does)."""
    ticket = quote(signed("T1"), safe="")
    protocol = ClientProtocol(parse_uri(f"ws://{VIEWER}/pty/{PTY}/connect?ticket={ticket}"),
                              origin=Origin(ORIGIN))
    request = protocol.connect()
    request.headers["x-ocedge-origin-secret"] = SECRET
    request.headers["x-ocedge-viewer-host"] = VIEWER
    protocol.send_request(request)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames: list[Frame] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for out in protocol.data_to_send():
                writer.write(out)
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
                if not data:
                    break
                protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Response):
                    assert event.status_code == 101, event
                else:
                    frames.append(event)
    finally:
        writer.close()
    return frames


@pytest.mark.unit
def test_both_sides_are_pinged_at_the_interval() -> None:
    async def scenario() -> tuple[list[Frame], list[Frame]]:
        async with recorded(ping_interval=0.2) as (terminal, upstream):
            seen = await _raw_browser(terminal.port, 1.5)
            return seen, upstream.received(Opcode.PING)

    to_browser, to_opencode = asyncio.run(scenario())
    assert len([f for f in to_browser if f.opcode == Opcode.PING]) >= 3, to_browser
    assert len(to_opencode) >= 3
    # Each was answered: the terminal is still open at the end, nobody closed it.
    assert not [f for f in to_browser if f.opcode == Opcode.CLOSE]


@pytest.mark.unit
def test_a_connection_silent_before_its_handshake_is_closed() -> None:
    async def scenario() -> float:
        async with recorded(handshake_timeout=0.3) as (terminal, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", terminal.port)
            started = time.monotonic()
            try:
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
            finally:
                writer.close()
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 2


# -- the real opencode ------------------------------------------------------------------


@pytest.fixture(scope="module")
def opencode(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str
             ) -> Iterator[OpencodeHandle]:
    with start_opencode(tmp_path_factory.mktemp("terminal"), password=PASSWORD) as handle:
        yield handle


@pytest.fixture(scope="module")
def pty(opencode: OpencodeHandle) -> str:
    with opencode.client() as client:
        created = client.post("/pty", json={"command": "/bin/sh"})
        assert created.status_code == 200, created.text
        return str(created.json()["id"])


def mint(client: httpx.Client, pty: str) -> str:
    """A ticket, as the edge forwards the browser's POST /pty/{id}/connect-token."""
    answer = client.post(f"/pty/{pty}/connect-token",
                         headers={"x-opencode-ticket": "1", "Origin": ORIGIN, "Host": VIEWER})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["ticket"])


def _port(opencode: OpencodeHandle) -> int:
    return int(opencode.url.rsplit(":", 1)[1])


async def _type(ws: ClientConnection, line: str, expect: str, timeout: float = 20) -> str:
    """Type ``line`` and read the terminal until ``expect`` shows (or fail with what did)."""
    await ws.send(line + "\r")
    seen = ""
    deadline = time.monotonic() + timeout
    while expect not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{expect!r} never came back; the terminal showed:\n{seen}")
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(ws.recv(), remaining)
            seen += message if isinstance(message, str) else message.decode(errors="replace")
    return seen


@pytest.mark.opencode
def test_a_typed_command_runs_in_opencodes_terminal(opencode: OpencodeHandle, pty: str) -> None:
    with opencode.client() as client:
        ticket = mint(client, pty)

    async def scenario() -> None:
        async with listening(_port(opencode)) as terminal, \
                browser(terminal.port, pty, ticket) as ws:
            await _type(ws, "echo term-$((6*7))", "term-42")

    asyncio.run(scenario())


@pytest.mark.opencode
def test_opencode_still_checks_the_ticket(opencode: OpencodeHandle, pty: str) -> None:
    """opencode itself still checks its ticket behind the listener (which adds no
    credential): one it did not mint (even if the edge signed it), one already used, or
    one hidden from opencode's parser is refused."""
    with opencode.client() as client:
        ticket = mint(client, pty)

    async def refused(terminal: Listening, ticket: str) -> int:
        with pytest.raises(InvalidStatus) as refusal:
            async with browser(terminal.port, pty, ticket):
                pass
        return refusal.value.response.status_code

    async def scenario() -> None:
        async with listening(_port(opencode)) as terminal:
            assert await refused(terminal, "not-a-ticket") == 403
            async with browser(terminal.port, pty, ticket):
                pass
            assert await refused(terminal, ticket) == 403  # used once already
            # opencode's own parser ends the query at a '#': it must read the checked one.
            tricky = await send_raw(terminal.port, handshake(pty, "bogus", query="x=1#&ticket={t}"))
            assert tricky.status == 403, tricky.data

    asyncio.run(scenario())


@pytest.mark.opencode
@pytest.mark.parametrize("case", REFUSALS)
def test_no_refusal_spends_the_ticket(opencode: OpencodeHandle, pty: str, case: str) -> None:
    changes, status = REFUSALS[case]
    with opencode.client() as client:
        ticket = mint(client, pty)

    async def scenario() -> None:
        async with listening(_port(opencode)) as terminal:
            answer = await send_raw(terminal.port,
                                    handshake(pty, ticket, **changes), timeout=10)
            assert answer.status == status, answer.data
            # The same ticket still opens the terminal: opencode never saw it.
            async with browser(terminal.port, pty, ticket) as ws:
                await _type(ws, f"echo after-{status}-$((1+1))", f"after-{status}-2")

    asyncio.run(scenario())


# -- python -m container ------------------------------------------------------------------


def _container_settings(state_dir: Path, **overrides: Any) -> Settings:
    return make_settings(state_dir).with_overrides(origin_secret=SECRET, **overrides)


@pytest.mark.opencode
def test_the_container_serves_the_terminal_on_its_terminal_port(state_dir: Path,
                                                               opencode_bin: str) -> None:
    port = free_port()
    # A 20 s idle timeout: typing renews the deadline once it would move it by 1 s.
    settings = _container_settings(state_dir, terminal_port=port, idle_timeout=20)
    with container(settings) as running:
        running.start()
        with running.client() as client:
            created = client.post("/pty", json={"command": "/bin/sh"})
            assert created.status_code == 200, created.text
            pty = created.json()["id"]
            ticket = mint(client, pty)

        async def scenario() -> int:
            refused = await send_raw(port, handshake(pty, ticket, secrets_=[]), timeout=10)
            assert refused.status == 403
            store = backends_for_tools(settings).state
            registered = (await store.get()).deadline or 0
            await asyncio.sleep(1.5)
            async with browser(port, pty, ticket) as ws:
                await _type(ws, "echo term-$((6*7))", "term-42")
                # Typing in the terminal is activity: the container itself renews.
                for _ in range(100):
                    if ((await store.get()).deadline or 0) > registered:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("typing in the terminal never renewed the deadline")
                # A stop tells an open terminal the server is going away.
                stopped = asyncio.ensure_future(asyncio.to_thread(running.stop))
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(ws.recv(), 30)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            return await stopped

        assert asyncio.run(scenario()) == 0
    # Gone with the container.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def _failed_start(settings: Settings, timeout: float = 120) -> tuple[int, str, str | None]:
    """Start the container (asked to, as the edge would) and see it fail: its exit
    status, its output, the reason recorded in the state item."""
    state = backends_for_tools(settings).state
    asyncio.run(Lifecycle(state, owner="test").begin_start())
    with container(settings) as driver:
        with pytest.raises(AssertionError):
            driver.start(timeout)
        assert driver.process is not None
        failed = asyncio.run(state.get())
        assert failed.status == Status.FAILED, driver.output()
        return driver.process.returncode, driver.output(), failed.reason


@pytest.mark.opencode
def test_a_terminal_port_that_cannot_be_bound_fails_the_start(state_dir: Path,
                                                              opencode_bin: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = _container_settings(state_dir, terminal_port=taken.getsockname()[1])
        code, output, reason = _failed_start(settings)
    assert code == 1, output
    assert "terminal listener could not start" in (reason or ""), output
