"""The TLS gate: the container's only public listener.

It terminates TLS with the boot certificate and relays each connection to
opencode on loopback, one request at a time: every request head must carry the
gate's own credential (random per boot, known only to the supervisor and the
edge, compared in constant time), and the gate puts opencode's own credential in
its place. opencode's password is in opencode's environment, where the agent can
read it; over the network it is worth nothing, since the gate replaces whatever
Authorization a request carries. Bodies are relayed by their framing (length or
chunked); responses, SSE streams and upgraded WebSocket connections pass as bytes.
A connection whose request does not pass, or whose framing is unclear, is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl

log = logging.getLogger("ocedge.gate")

_MAX_HEAD = 64 * 1024
_HEAD_TIMEOUT = 10.0
_REFUSED = (b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
            b"content-length: 45\r\nconnection: close\r\n\r\n"
            b'{"error":"unauthorized","message":"refused."}')


class _Refused(Exception):
    """The request must not reach opencode: the connection is closed."""


def _parse(head: bytes) -> tuple[list[bytes], dict[bytes, list[bytes]]]:
    """The head's lines and its headers by lower-case name; _Refused if malformed."""
    lines = head[:-4].split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b"\n" in line or b"\r" in line:
            raise _Refused  # also obs-fold (a line starting with white space)
        headers.setdefault(name.lower(), []).append(value.strip())
    return lines, headers


def _body_framing(headers: dict[bytes, list[bytes]]) -> int | None:
    """The body's length, None when it is chunked; _Refused when it is unclear."""
    te, length = headers.get(b"transfer-encoding"), headers.get(b"content-length")
    if te is not None:
        if length is not None or [v.lower() for v in te] != [b"chunked"]:
            raise _Refused
        return None
    if length is None:
        return 0
    if len(length) != 1 or not length[0].isdigit() or len(length[0]) > 15:
        raise _Refused
    return int(length[0])


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
    while size > 0:
        data = await reader.read(min(size, 65536))
        if not data:
            raise _Refused  # the body ended early
        writer.write(data)
        size -= len(data)
        await writer.drain()


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 15 or \
                any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise _Refused
        writer.write(line)
        size = int(size_text, 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            await writer.drain()
            return
        await _copy(reader, writer, size)
        if await reader.readexactly(2) != b"\r\n":
            raise _Refused
        writer.write(b"\r\n")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


class Gate:
    def __init__(self, expected_authorization: bytes, upstream_port: int,
                 context: ssl.SSLContext, upstream_authorization: bytes) -> None:
        self._expected = expected_authorization
        self._upstream_authorization = upstream_authorization
        self.upstream_port = upstream_port
        self.context = context
        self.server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port, ssl=self.context,
                                                 ssl_handshake_timeout=10, limit=_MAX_HEAD)
        bound: int = self.server.sockets[0].getsockname()[1]
        log.info("TLS gate listening on %s:%d", host, bound)
        return bound

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._open):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def _admit(self, head: bytes) -> tuple[bytes, int | None, bool]:
        """The head to send opencode (its Authorization replaced), the body's length
        (None: chunked) and whether it upgrades the connection; _Refused if it may not pass."""
        lines, headers = _parse(head)
        presented = headers.get(b"authorization", [])
        # Both sides are compared whatever the count, so the time says nothing.
        ok = hmac.compare_digest(presented[0] if presented else b"", self._expected)
        if not ok or len(presented) != 1:
            raise _Refused
        length = _body_framing(headers)
        connection = b",".join(headers.get(b"connection", [])).lower()
        upgrade = b"upgrade" in headers and b"upgrade" in connection
        kept = [line for line in lines[1:] if line.partition(b":")[0].lower() != b"authorization"]
        rewritten = b"\r\n".join([lines[0], b"Authorization: " + self._upstream_authorization,
                                   *kept]) + b"\r\n\r\n"
        return rewritten, length, upgrade

    async def _requests(self, head: bytes, reader: asyncio.StreamReader,
                        upstream: asyncio.StreamWriter) -> None:
        """Relay the requests of one connection, ``head`` the first one's."""
        while True:
            rewritten, length, upgrade = self._admit(head)
            upstream.write(rewritten)
            if upgrade:
                await _pipe(reader, upstream)  # a WebSocket from now on
                return
            if length is None:
                await _copy_chunked(reader, upstream)
            else:
                await _copy(reader, upstream, length)
            await upstream.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise _Refused from None
                if upstream.can_write_eof():
                    upstream.write_eof()  # the edge closed: opencode finishes, then closes
                return

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        self._open.add(writer)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
                self._admit(head)
            except _Refused:
                writer.write(_REFUSED)
                await writer.drain()
                return
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError,
                    ValueError, ConnectionError, ssl.SSLError):
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port)
            forth = asyncio.ensure_future(self._requests(head, reader, upstream_writer))
            back = asyncio.ensure_future(_pipe(upstream_reader, writer))
            await asyncio.wait({forth, back}, return_when=asyncio.FIRST_COMPLETED)
            if back.done() or forth.exception() is not None:
                forth.cancel()  # opencode closed, or a request may not pass: so does the gate
                back.cancel()
                await asyncio.gather(forth, back, return_exceptions=True)
            else:
                await back
        except OSError as exc:
            log.warning("gate connection failed: %s", type(exc).__name__)
        finally:
            self._open.discard(writer)
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()
