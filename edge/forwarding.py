"""Forwarding to the container: HTTP (bodies streamed both ways, SSE unbuffered)
and WebSockets (both directions), over a link from ``edge.links``.

The client's credentials never go upstream: its Authorization and X-API-Key
headers and the edge's own cookie are dropped, and the internal credential the
container registered is added instead. ``Origin`` is forwarded, so opencode can
check it too. The request target is built from its parts and must be a path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote

from edge.request import accepts_event_stream
from edge.session import split_cookie_header
from edge.types import Receive, Scope, Send
from edge.upstream import Connection, UpstreamError, UpstreamPool

log = logging.getLogger("ocedge.edge")

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"http2-settings",
})
# Never forwarded upstream: the client's own credentials, what the edge sets itself,
# and the body framing (the edge frames the body it sends). The client's Host is
# kept: opencode checks Origin against it (terminal tickets).
_DROP_REQUEST = HOP_BY_HOP | {
    b"authorization", b"x-api-key", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"x-real-ip", b"content-length", b"expect",
}
# Upstream's auth challenge would make browsers prompt for the internal credential.
_DROP_RESPONSE = HOP_BY_HOP | {b"www-authenticate"}
WS_DROP = _DROP_REQUEST | {
    b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}
# Bytes that never belong in a request target: controls, space, DEL, and '#'.
_NOT_IN_TARGET = frozenset(range(0x21)) | {0x7F, ord("#")}


class BadRequest(ValueError):
    """The request cannot be forwarded as it is; the message says why (a 400)."""


def request_target(scope: Scope) -> bytes:
    """The origin-form target sent upstream: the raw path as the client sent it
    (behind API Gateway, the event's ``rawPath``) and the raw query. Never an
    absolute URL: the container's address comes from the state store alone."""
    raw: bytes | None = scope.get("raw_path")
    if not raw:
        event: dict[str, Any] = scope.get("aws.event") or {}
        raw_path = event.get("rawPath")
        raw = (raw_path.encode("latin-1", "replace") if isinstance(raw_path, str)
               else quote(scope["path"], safe="/:@!$&'()*+,;=").encode("latin-1", "replace"))
    query: bytes = scope.get("query_string") or b""
    if not raw.startswith(b"/") or not _NOT_IN_TARGET.isdisjoint(raw):
        raise BadRequest("the request target must be a path starting with '/'")
    if not _NOT_IN_TARGET.isdisjoint(query):
        raise BadRequest("the query string holds characters a URL cannot")
    return raw + b"?" + query if query else raw


@dataclass(frozen=True)
class Upstream:
    """Where the container listens and how the edge proves itself to it."""

    host: str
    port: int
    username: str = field(default="opencode")
    password: str = field(default="", repr=False)

    @cached_property
    def authorization(self) -> bytes:
        token = base64.b64encode(f"{self.username}:{self.password}".encode())
        return b"Basic " + token

    def url(self, scheme: str, scope: Scope) -> str:
        """An absolute URL for a client library (the WebSocket bridge), from parts."""
        return f"{scheme}://{self.host}:{self.port}" + request_target(scope).decode("latin-1")


class UpstreamUnavailable(Exception):
    """The container could not be reached (refused, timed out, reset before a response).

    ``replayable``: none of the client's request body was read, so the request can
    be sent again (to a container that is woken meanwhile)."""

    def __init__(self, message: str, replayable: bool = True) -> None:
        super().__init__(message)
        self.replayable = replayable


# Headers the edge itself decides about: a client's `Connection` cannot remove them.
_MANAGED = frozenset({b"host"})


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The hop-by-hop names a client's `Connection` header lists (other than those the
    edge manages: `Connection: close, host` must not send a request without a Host)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens - _MANAGED


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
            if host:
                continue  # one Host upstream: the first, the one the edge checked
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


class HttpForwarder:
    """Forwards HTTP requests over one container link's pool (``edge.upstream``)."""

    def __init__(self, pool: UpstreamPool, read_timeout: float, trust_forwarded: bool) -> None:
        self.pool = pool
        self.read_timeout = read_timeout
        self.trust_forwarded = trust_forwarded

    async def forward(self, scope: Scope, receive: Receive, send: Send, upstream: Upstream,
                      extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Send the request upstream and stream the answer back.

        Raises UpstreamUnavailable when nothing was sent to the client yet, so the
        caller can answer with a clear 502/503 instead.
        """
        method: str = scope["method"]
        framing, preread = await _framing(scope, receive)
        headers = forward_headers(scope, upstream, _DROP_REQUEST, self.trust_forwarded)
        lines = [method.encode(), b" ", request_target(scope), b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        if framing is not None:
            lines.append(framing)
        lines.append(b"\r\n")
        head = b"".join(lines)
        timeout = None if accepts_event_stream(scope) else self.read_timeout
        body_read = preread is not None
        for attempt in range(2):
            try:
                conn, reused = await self.pool.acquire()
            except UpstreamError as exc:
                raise UpstreamUnavailable(str(exc), replayable=not body_read) from exc
            try:
                conn.begin(head, method == "HEAD", timeout)
                if preread:
                    await conn.write(preread)
                elif framing is not None and framing is not _EMPTY:
                    body_read = True
                    if not await _send_body(conn, receive, framing is _CHUNKED):
                        self.pool.release(conn)  # the client left mid-body
                        return
                status, response_headers = await conn.response_head()
            except UpstreamError as exc:
                if conn.head_done:  # it answered before taking the whole body
                    status, response_headers = conn.status, conn.headers
                else:
                    self.pool.release(conn)
                    if reused and attempt == 0 and not body_read and not conn.received_any:
                        continue  # a kept-alive connection the container had just closed
                    raise UpstreamUnavailable(str(exc), replayable=not body_read) from exc
            except BaseException:
                self.pool.release(conn)
                raise
            break
        try:
            await _respond(conn, status, response_headers, receive, send, extra_headers or [])
        finally:
            self.pool.release(conn)


_CHUNKED = b"transfer-encoding: chunked\r\n"
_EMPTY = b"content-length: 0\r\n"  # said so, and nothing to read


async def _framing(scope: Scope, receive: Receive) -> tuple[bytes | None, bytes | None]:
    """The framing header of the body sent upstream (None: no body), and the body
    when it had to be read first. The edge frames the body itself: the client's
    Content-Length / Transfer-Encoding never go upstream as they came."""
    length: bytes | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value.strip()
        elif name == b"transfer-encoding":
            chunked = True
    if chunked:
        return _CHUNKED, None
    if length is not None:
        if not length.isdigit():
            raise BadRequest("the Content-Length header is not a number")
        return (b"content-length: " + length + b"\r\n" if length.strip(b"0") else _EMPTY), None
    if "aws.event" not in scope:
        return None, None  # an HTTP server saw no body framing: there is no body
    # Mangum hands over the whole body at once, whatever the headers say.
    message = await receive()
    body = message.get("body", b"") if message["type"] == "http.request" else b""
    if not body:
        return None, None
    return b"content-length: " + str(len(body)).encode() + b"\r\n", body


async def _send_body(conn: Connection, receive: Receive, chunked: bool) -> bool:
    """Stream the client's body upstream; False when the client went away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.close()
            return False
        chunk = message.get("body", b"")
        if chunk:
            await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if not message.get("more_body", False):
            if chunked:
                await conn.write(b"0\r\n\r\n")
            return True


async def _respond(conn: Connection, status: int, raw: list[tuple[bytes, bytes]],
                   receive: Receive, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> None:
    drop = _DROP_RESPONSE | _connection_tokens(raw) if any(
        n == b"connection" for n, _ in raw) else _DROP_RESPONSE
    headers = [(name, value) for name, value in raw if name not in drop]
    headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if conn.complete and conn.error is None:
        # The whole answer is already here (the common case for API calls).
        body = b"".join(conn.chunks)
        conn.chunks.clear()
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    if any(name == b"content-length" for name, _ in headers):
        # A sized body: a failure mid-way must abort the client's connection too
        # (raising does), so a truncated body is never taken for a whole one.
        while (chunk := await conn.read()) is not None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await _stream(conn, receive, send)


async def _stream(conn: Connection, receive: Receive, send: Send) -> None:
    """An event stream or chunked body: forwarded piece by piece, and dropped
    upstream the moment the client leaves (or the upstream stream is held forever)."""
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        conn.fail("the client went away")

    watcher = asyncio.ensure_future(watch())
    try:
        while (chunk := await conn.read()) is not None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as exc:
        if gone:
            return
        # The container went away mid-stream: end the client's stream too.
        log.info("upstream stream ended: %s", exc)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await send({"type": "http.response.body", "body": b"", "more_body": False})
