"""The edge's HTTP/1.1 client to the container: kept-alive connections to one
address, the response parsed by llhttp (httptools, the C parser uvicorn serves
with), bodies streamed both ways with flow control.

Why not a library: forwarding is the edge's hot path, and measured in one run
behind the same uvicorn (GET /global/health, opencode upstream, CPU per proxied
request) httpx's pool cost ~890 µs, aiohttp ~200 µs, httpx over aiohttp ~280 µs,
aiosonic ~270 µs, pyreqwest (Rust) ~180 µs — and this ~105 µs, all of it server
included. A proxy needs none of what the libraries spend it on (URL objects,
cookie jars, redirects, header merging, per-request socket probing); pyreqwest
also cannot take the pinned per-generation ``ssl.SSLContext``. Framing is the
parser's: llhttp refuses what request smuggling needs (duplicate or invalid
lengths, both length and chunked, bare LF), and the edge sends its own framing
upstream, never the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import cast

import httptools

# Response bytes held for a slow client before the upstream is paused.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The exchange with the container failed; ``head_received`` says whether its
    response had started (then nothing may be sent again)."""

    def __init__(self, message: str, head_received: bool = False) -> None:
        super().__init__(message)
        self.head_received = head_received


class Connection(asyncio.Protocol):
    """One kept-alive connection; carries one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reset(head_only=False)

    def _reset(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.received_any = False  # in this exchange
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.reusable = False
        self.until_eof = False
        self.error: UpstreamError | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self._informational = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout: float | None = None
        self.last_activity = self.loop.time()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.fail(f"malformed response from the container: {type(exc).__name__}")

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and self.until_eof and exc is None and not self.complete:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            self._set_error(f"the container closed the connection ({exc or 'EOF'})")
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: not the answer
            self.headers = []
            return
        self.status = status
        self.head_done = True
        sized = chunked = False
        for name, value in self.headers:
            if name == b"content-length":
                sized = True
            elif name == b"transfer-encoding":
                chunked = value.rstrip().lower().endswith(b"chunked")
        self.until_eof = (not sized and not chunked and status not in (204, 304)
                          and not self.head_only)
        if self.head_only:
            # llhttp does not know the request was HEAD: the answer ends here, and
            # the connection is not used again rather than risk misreading it.
            self.complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self.reusable = self.parser.should_keep_alive() and not self.head_only
        self._wake()

    # -- the exchange ------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _set_error(self, message: str) -> None:
        if self.error is None:
            self.error = UpstreamError(message, self.head_done)
        self._wake()

    def fail(self, message: str) -> None:
        """End the exchange with an error and drop the connection."""
        self._set_error(message)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def begin(self, head: bytes, head_only: bool, timeout: float | None) -> None:
        """Send a request head; the response is read with :meth:`response_head`."""
        self._reset(head_only)
        assert self.transport is not None
        self.transport.write(head)
        self._timeout = timeout
        if timeout is not None:
            self._timer = self.loop.call_later(timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        assert self._timeout is not None
        quiet = self.loop.time() - self.last_activity
        if quiet >= self._timeout and not self.reading_paused and not self.complete:
            self.fail(f"the container sent nothing for {self._timeout:g} s")
        elif not self.complete:
            self._timer = self.loop.call_later(max(self._timeout - quiet, 0.01),
                                               self._check_timeout)

    async def write(self, data: bytes) -> None:
        """Send request body bytes, waiting while the container is not reading."""
        if self.closed or self.transport is None:
            raise UpstreamError("the container closed the connection", self.head_done)
        self.last_activity = self.loop.time()
        self.transport.write(data)
        if self._write_paused:
            self._drain = self.loop.create_future()
            await self._drain
            if self.closed:
                raise UpstreamError("the container closed the connection", self.head_done)

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def response_head(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()
        return self.status, self.headers

    async def read(self) -> bytes | None:
        """The next piece of the response body, or None at its end."""
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.reading_paused and self.buffered < _LOW_WATER and self.transport:
                    self.reading_paused = False
                    self.last_activity = self.loop.time()
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait()

    def finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False  # a kept-alive connection must read its next answer
            self.transport.resume_reading()


class UpstreamPool:
    """Kept-alive connections to one container address (TLS with ``tls``).

    A connection is taken from the pool without probing its socket: one the
    container closed has already told us (``connection_lost``), and one idle past
    ``idle_expiry`` (below opencode's own keep-alive timeout) is not reused.
    """

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None,
                 connect_timeout: float, idle_expiry: float = 4.0, max_idle: int = 100) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.idle_expiry = idle_expiry
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        self._closed = False

    async def acquire(self) -> tuple[Connection, bool]:
        """A connection, and whether it was used before."""
        if self._closed:
            raise UpstreamError("the link to this container was closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                self._all.discard(conn)
                continue
            if now - conn.idle_since > self.idle_expiry:
                self._discard(conn)
                continue
            return conn, True
        return await self.connect(loop), False

    async def connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: Connection(loop), self.host, self.port, ssl=self.tls,
                    ssl_handshake_timeout=self.connect_timeout if self.tls else None)
        except (OSError, TimeoutError, ssl.SSLError, ssl.CertificateError) as exc:
            raise UpstreamError(f"could not connect to {self.host}:{self.port}: "
                                f"{type(exc).__name__}: {exc}") from exc
        # uvloop may call connection_made only after the connection is returned.
        conn.transport = conn.transport or transport
        self._all.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """Back to the pool when its exchange ended cleanly, closed otherwise."""
        conn.finish()
        if (conn.complete and conn.reusable and not conn.closed and not self._closed
                and not conn.chunks and len(self._idle) < self.max_idle):
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: Connection) -> None:
        conn.close()
        self._all.discard(conn)

    async def aclose(self) -> None:
        """Close every connection, in use or idle."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._all):
            with contextlib.suppress(Exception):
                conn.close()
        self._all.clear()
