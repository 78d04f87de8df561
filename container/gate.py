"""The TLS gate: the container's only public listener.

It terminates TLS with the boot certificate, reads the first request head of
each connection, and relays the connection to opencode on loopback only if that
request carries the internal credential (compared in constant time). After that
it copies bytes both ways untouched, so SSE streams and WebSocket upgrades pass
as they are; opencode still checks the credential on every request itself.
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


def _authorization(head: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"authorization":
            return value.strip()
    return None


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
                 context: ssl.SSLContext) -> None:
        self._expected = expected_authorization
        self.upstream_port = upstream_port
        self.context = context
        self.server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port, ssl=self.context,
                                                 ssl_handshake_timeout=10)
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        self._open.add(writer)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError,
                    ConnectionError, ssl.SSLError):
                return
            if len(head) > _MAX_HEAD:
                return
            presented = _authorization(head) or b""
            if not hmac.compare_digest(presented, self._expected):
                writer.write(_REFUSED)
                await writer.drain()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port)
            upstream_writer.write(head)
            await asyncio.gather(_pipe(reader, upstream_writer),
                                 _pipe(upstream_reader, writer))
        except OSError as exc:
            log.warning("gate connection failed: %s", type(exc).__name__)
        finally:
            self._open.discard(writer)
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()
