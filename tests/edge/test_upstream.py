"""The edge's HTTP/1.1 client (edge.upstream) and its server protocol (edge.server),
against raw asyncio servers on loopback that answer exactly the bytes a test wants:
framing the parser refuses, a kept-alive connection the container closes, HEAD,
timeouts; and (the `unit` tier) the request target, the links, the response head
written together with its body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from edge.forwarding import BadRequest, HttpForwarder, Upstream, forward_headers, request_target
from edge.links import UpstreamLinks
from edge.server import _HeadWithBody
from edge.types import Message
from edge.upstream import UpstreamError, UpstreamPool
from infra.interfaces import ContainerState, Status
from infra.settings import Settings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GET = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


def run(coro_factory: Callable[[], Awaitable[None]]) -> None:
    """On uvloop, as the edge runs in production."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro_factory())  # type: ignore[arg-type]


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _exchange(pool: UpstreamPool, head: bytes = GET, head_only: bool = False,
                    timeout: float | None = 5) -> tuple[int, bytes, bool]:
    conn, reused = await pool.acquire()
    try:
        conn.begin(head, head_only, timeout)
        status, _ = await conn.response_head()
        body = b""
        while (chunk := await conn.read()) is not None:
            body += chunk
        return status, body, reused
    finally:
        pool.release(conn)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def test_kept_alive_connections_are_reused() -> None:
    async def main() -> None:
        connections = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            while True:
                try:
                    await _read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port, None, 2)
        results = [await _exchange(pool) for _ in range(5)]
        assert [r[:2] for r in results] == [(200, b"ok")] * 5
        assert [r[2] for r in results] == [False, True, True, True, True]
        assert connections == 1
        await pool.aclose()
        server.close()

    run(main)


@pytest.mark.parametrize("answer", [
    # Both a length and chunked: the classic smuggling shape.
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    # Two different lengths.
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
    # Not HTTP at all.
    b"SSH-2.0-OpenSSH_9.2\r\n",
    # A header line without a colon.
    b"HTTP/1.1 200 OK\r\nbroken header\r\ncontent-length: 0\r\n\r\n",
    # An upgrade nobody asked for (the edge never asks): another protocol follows.
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\nPRI",
])
def test_a_response_the_parser_refuses_is_an_error_not_an_answer(answer: bytes) -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(1)

        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port, None, 2)
        with pytest.raises(UpstreamError):
            await _exchange(pool)
        await pool.aclose()
        server.close()

    run(main)


def test_a_kept_alive_connection_closed_by_the_container_is_retried_by_the_caller() -> None:
    """The pool hands out a connection the container closes on the next request
    without answering: the error says nothing was received, on a reused connection."""
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            await _read_request(reader)  # the second request: hang up without a word
            writer.transport.abort()

        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port, None, 2)
        assert (await _exchange(pool))[0] == 200
        conn, reused = await pool.acquire()
        assert reused
        conn.begin(GET, False, 5)
        with pytest.raises(UpstreamError) as failed:
            await conn.response_head()
        assert not failed.value.head_received and not conn.received_any
        pool.release(conn)
        await pool.aclose()
        server.close()

    run(main)


def test_head_answers_end_at_their_head_and_are_not_reused() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    await _read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")

        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port, None, 2)
        status, body, _ = await _exchange(pool, b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n", True)
        assert (status, body) == (200, b"")
        assert (await _exchange(pool, b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n", True))[2] is False
        await pool.aclose()
        server.close()

    run(main)


def test_informational_answers_are_skipped_and_eof_ends_an_unframed_body() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)  # the informational answer arrives on its own
            writer.write(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"until the end")
            await writer.drain()
            writer.close()

        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port, None, 2)
        assert await _exchange(pool) == (200, b"until the end", False)
        await pool.aclose()
        server.close()

    run(main)


def test_a_silent_container_times_out() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _read_request(reader)
            await asyncio.sleep(5)

        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port, None, 2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError, match="sent nothing"):
            await _exchange(pool, timeout=0.3)
        assert asyncio.get_running_loop().time() - started < 2
        await pool.aclose()
        server.close()

    run(main)


def test_nothing_listening_is_a_connect_error() -> None:
    async def main() -> None:
        server, port = await _serve(lambda r, w: asyncio.sleep(0))
        server.close()
        await server.wait_closed()
        pool = UpstreamPool("127.0.0.1", port, None, 2)
        with pytest.raises(UpstreamError, match="could not connect"):
            await pool.acquire()

    run(main)


def test_the_forwarder_sends_a_get_again_when_a_kept_alive_connection_was_dropped() -> None:
    async def main() -> None:
        connections = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await _read_request(reader)  # keep-alive promised, then hung up on
            writer.transport.abort()

        server, port = await _serve(handler)
        forwarder = HttpForwarder(UpstreamPool("127.0.0.1", port, None, 2), 5, False)
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        for _ in range(3):
            sent.clear()
            await forwarder.forward(_scope(method="GET", raw_path=b"/x", client=("1.2.3.4", 5)),
                                    receive, send, Upstream("127.0.0.1", port))
            assert sent[0]["status"] == 200 and sent[-1]["body"] == b"ok"
        assert connections == 3
        await forwarder.pool.aclose()
        server.close()

    run(main)


@pytest.mark.unit
def test_a_request_holding_an_older_state_never_closes_the_newest_link() -> None:
    async def main() -> None:
        links = UpstreamLinks(Settings())

        def state(generation: int) -> ContainerState:
            return ContainerState(status=Status.RUNNING, generation=generation,
                                  endpoint=f"127.0.0.1:{1000 + generation}", credential="c")

        first = await links.to(state(1))
        second = await links.to(state(2))
        assert await links.to(state(1)) is first  # the previous one is still there
        assert await links.to(state(2)) is second
        older = await links.to(state(0))  # a request that read the state long ago
        assert older is not second and not second.forwarder.pool._closed
        assert first.forwarder.pool._closed  # the link before the previous one
        third = await links.to(state(3))
        assert second.forwarder.pool._closed is False and older.forwarder.pool._closed
        assert await links.to(state(3)) is third
        await links.aclose()
        assert third.forwarder.pool._closed and second.forwarder.pool._closed

    run(main)


# -- the request target --------------------------------------------------------------


def _scope(**parts: object) -> dict[str, object]:
    return {"type": "http", "path": "/", "query_string": b"", "headers": []} | parts


@pytest.mark.unit
@pytest.mark.parametrize(("scope", "target"), [
    (_scope(raw_path=b"/file/a%2Fb", path="/file/a/b", query_string=b"q=1"), b"/file/a%2Fb?q=1"),
    # Behind API Gateway (Mangum): no raw_path, the event's rawPath is forwarded.
    (_scope(raw_path=None, path="/file/a/b", **{"aws.event": {"rawPath": "/file/a%2Fb"}}),
     b"/file/a%2Fb"),
    # Neither: the decoded path, encoded again.
    (_scope(raw_path=None, path="/a b/%?#"), b"/a%20b/%25%3F%23"),
])
def test_the_target_is_built_from_the_raw_path_and_query(scope: dict[str, object],
                                                          target: bytes) -> None:
    assert request_target(scope) == target


@pytest.mark.unit
@pytest.mark.parametrize("raw_path", [b"*", b"http://evil.example/x", b"evil.example/x",
                                      b"", b"/a b", b"/a\r\nx: y", b"/a#frag"])
def test_a_target_that_is_not_a_path_is_refused(raw_path: bytes) -> None:
    scope = _scope(raw_path=raw_path, path=raw_path.decode("latin-1") or "x")
    with pytest.raises(BadRequest):
        request_target(scope)


@pytest.mark.unit
def test_one_host_goes_upstream_the_first_the_edge_checked() -> None:
    scope = _scope(headers=[(b"host", b"edge.example"), (b"host", b"evil.example")],
                   client=("1.2.3.4", 5), scheme="http")
    headers = forward_headers(scope, Upstream("127.0.0.1", 1), frozenset(), False)
    assert [v for n, v in headers if n == b"host"] == [b"edge.example"]


# -- the response head goes out with the body ----------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


@pytest.mark.unit
def test_the_head_is_written_with_the_first_body_piece() -> None:
    async def main() -> None:
        transport = _Recorder()
        held = _HeadWithBody(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        held.write(b"HTTP/1.1 200 OK\r\n\r\n")
        held.write(b"body")
        await asyncio.sleep(0)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]

    run(main)


@pytest.mark.unit
def test_a_head_whose_body_comes_later_still_goes_out_at_once() -> None:
    async def main() -> None:
        transport = _Recorder()
        held = _HeadWithBody(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        held.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await asyncio.sleep(0)  # an event stream waiting for its first event
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]
        held.write(b"data: 1\n\n")
        assert transport.writes[-1] == b"data: 1\n\n"

    run(main)
