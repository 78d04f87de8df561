"""Forwarding to the container: HTTP (bodies streamed both ways, SSE unbuffered)
and WebSockets (both directions), over a link from ``edge.links``.

The client's credentials never go upstream: its Authorization and X-API-Key
headers and the edge's own cookie are dropped, and the internal credential the
container registered is added instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import httpx

from edge.request import accepts_event_stream
from edge.session import split_cookie_header
from edge.types import Receive, Scope, Send

log = logging.getLogger("ocedge.edge")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"http2-settings",
})
# Never forwarded upstream: the client's own credentials and what the edge sets itself.
# The client's Host is kept: opencode checks Origin against it (terminal tickets).
_DROP_REQUEST = HOP_BY_HOP | {
    b"authorization", b"x-api-key", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"x-real-ip",
}
# Upstream's auth challenge would make browsers prompt for the internal credential.
_DROP_RESPONSE = HOP_BY_HOP | {b"www-authenticate"}
_WS_DROP = _DROP_REQUEST | {
    b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"origin",
}


@dataclass(frozen=True)
class Upstream:
    """Where the container listens and how the edge proves itself to it."""

    host: str
    port: int
    username: str = field(default="opencode")
    password: str = field(default="", repr=False)

    @property
    def authorization(self) -> bytes:
        token = base64.b64encode(f"{self.username}:{self.password}".encode())
        return b"Basic " + token

    def url(self, scheme: str, scope: Scope) -> str:
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        return f"{scheme}://{self.host}:{self.port}{target}"


class UpstreamUnavailable(Exception):
    """The container could not be reached (refused, timed out, reset before a response).

    ``replayable``: none of the client's request body was read, so the request can
    be sent again (to a container that is woken meanwhile)."""

    def __init__(self, message: str, replayable: bool = True) -> None:
        super().__init__(message)
        self.replayable = replayable


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def forward_headers(scope: Scope, upstream: Upstream, drop: frozenset[bytes],
                    trust_forwarded: bool) -> list[tuple[bytes, bytes]]:
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    extra_drop = _connection_tokens(raw)
    out: list[tuple[bytes, bytes]] = []
    host = b""
    prior_for = b""
    for name, value in raw:
        lname = name.lower()
        if lname == b"host":
            host = value
        elif lname == b"x-forwarded-for" and trust_forwarded:
            prior_for = value
        if lname in drop or lname in extra_drop:
            continue
        if lname == b"cookie":
            value = split_cookie_header(value.decode("latin-1"))[1].encode("latin-1")
            if not value:
                continue
        out.append((lname, value))
    client = scope.get("client")
    client_ip = (client[0] if client else "").encode()
    forwarded_for = prior_for + b", " + client_ip if prior_for else client_ip
    scheme = b"https" if scope.get("scheme") in ("https", "wss") else b"http"
    if not host or b"host" in drop:
        out.append((b"host", f"{upstream.host}:{upstream.port}".encode()))
    out.append((b"authorization", upstream.authorization))
    if forwarded_for:
        out.append((b"x-forwarded-for", forwarded_for))
    out.append((b"x-forwarded-proto", scheme))
    if host:
        out.append((b"x-forwarded-host", host))
    return out


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        lname = name.lower()
        if lname == b"content-length":
            return value.strip() not in (b"", b"0")
        if lname == b"transfer-encoding":
            return True
    return False


class HttpForwarder:
    """Forwards through the pooled transport of the edge's one httpx client.

    Going to the transport directly skips what a proxy must not do anyway —
    merging default headers, a shared cookie jar, following redirects, auth —
    and most of httpx's per-request cost.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, read_timeout: float,
                 connect_timeout: float, trust_forwarded: bool) -> None:
        self.transport = transport
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.trust_forwarded = trust_forwarded

    async def forward(self, scope: Scope, receive: Receive, send: Send, upstream: Upstream,
                      extra_headers: list[tuple[bytes, bytes]] | None = None,
                      scheme: str = "http") -> None:
        """Send the request upstream and stream the answer back.

        Raises UpstreamUnavailable when nothing was sent to the client yet, so the
        caller can answer with a clear 502/503 instead.
        """
        body_done = asyncio.Event()
        body_read = False

        async def request_body() -> AsyncIterator[bytes]:
            nonlocal body_read
            body_read = True
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise asyncio.CancelledError("client went away")
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    break
            body_done.set()

        headers = forward_headers(scope, upstream, _DROP_REQUEST, self.trust_forwarded)
        wants_stream = accepts_event_stream(scope)
        timeout = {"connect": self.connect_timeout,
                   "read": None if wants_stream else self.read_timeout,
                   "write": self.read_timeout, "pool": self.connect_timeout}
        has_body = _has_body(scope)
        if not has_body:
            body_done.set()
        request = httpx.Request(
            scope["method"], upstream.url(scheme, scope), headers=headers,
            content=request_body() if has_body else None, extensions={"timeout": timeout})
        try:
            response = await self.transport.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                httpx.ReadError, httpx.PoolTimeout, httpx.ReadTimeout, ssl.SSLError) as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}",
                                      replayable=not body_read) from exc
        try:
            await self._respond(response, receive, send, extra_headers or [],
                                body_done.is_set())
        finally:
            await response.aclose()

    async def _respond(self, response: httpx.Response, receive: Receive, send: Send,
                       extra_headers: list[tuple[bytes, bytes]], body_done: bool) -> None:
        raw = response.headers.raw
        extra_drop = _connection_tokens(raw)
        headers = [(n.lower(), v) for n, v in raw
                   if n.lower() not in _DROP_RESPONSE and n.lower() not in extra_drop]
        headers.extend(extra_headers)
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": headers})
        streaming = b"content-length" not in {n for n, _ in headers}
        if streaming and body_done:
            # Event streams and chunked bodies: stop reading upstream the moment
            # the client leaves, or the upstream stream would be held forever.
            await self._stream_until_disconnect(response, receive, send)
            return
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream_until_disconnect(self, response: httpx.Response, receive: Receive,
                                       send: Send) -> None:
        async def pump() -> None:
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
                # The container went away mid-stream: end the client's stream too.
                log.info("upstream stream ended: %s", type(exc).__name__)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pump_task = asyncio.ensure_future(pump())
        watch_task = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({pump_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump_task, watch_task):
                task.cancel()
            for task in (pump_task, watch_task):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if pump_task.done() and not pump_task.cancelled() and pump_task.exception():
            raise pump_task.exception()  # type: ignore[misc]


async def forward_websocket(scope: Scope, receive: Receive, send: Send, upstream: Upstream,
                            trust_forwarded: bool, scheme: str = "ws",
                            tls: ssl.SSLContext | None = None,
                            on_message: Callable[[], None] | None = None) -> None:
    """Bridge a client WebSocket to the container's. Raises UpstreamUnavailable before
    the client is accepted when the container refuses."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    headers = forward_headers(scope, upstream, _WS_DROP, trust_forwarded)
    headers = [(n, v) for n, v in headers if n != b"host"]
    subprotocols = [p for p in scope.get("subprotocols", []) if p]
    try:
        upstream_ws = await connect(
            upstream.url(scheme, scope),
            additional_headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
            subprotocols=subprotocols or None,
            open_timeout=10, ping_interval=20, ping_timeout=20, max_size=None,
            compression=None, ssl=tls, user_agent_header=None, proxy=None)
    except (OSError, TimeoutError, InvalidHandshake, InvalidStatus, ssl.SSLError) as exc:
        raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from exc

    message = await receive()
    if message["type"] != "websocket.connect":
        await upstream_ws.close()
        return
    await send({"type": "websocket.accept", "subprotocol": upstream_ws.subprotocol})

    async def client_to_upstream() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                if on_message is not None:
                    on_message()
                if msg.get("bytes") is not None:
                    await upstream_ws.send(msg["bytes"])
                elif msg.get("text") is not None:
                    await upstream_ws.send(msg["text"])
            elif msg["type"] == "websocket.disconnect":
                await upstream_ws.close(code=msg.get("code", 1000))
                return

    async def upstream_to_client() -> None:
        try:
            async for data in upstream_ws:
                if isinstance(data, bytes):
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data})
            code = upstream_ws.close_code or 1000
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1011
        if code in (1005, 1006, 1015):
            # Reserved codes that must not be sent in a close frame.
            code = 1000 if code == 1005 else 1011
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})

    tasks = {asyncio.ensure_future(client_to_upstream()),
             asyncio.ensure_future(upstream_to_client())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        await upstream_ws.close()
