"""HTTP/1.1 exactly as written: requests sent byte for byte over a socket, for the
shapes no HTTP library will send (duplicated or unicode headers, CRLF inside values,
conflicting lengths, bodies that trickle in or never finish).

    answer = asyncio.run(send_raw(port, b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"))
    answer.status  # None when the connection closed without an answer
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding: *chunked", re.IGNORECASE)


def _complete(received: bytes, head_request: bool) -> bool:
    """Whether ``received`` holds a whole answer (so a server that keeps the connection
    open, as after a refused WebSocket handshake, is not waited on)."""
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head.startswith(b"HTTP/1.1 101") or head_request or re.match(rb"HTTP/1\.[01] (1|204|304)",
                                                                       head):
        return True  # upgraded (its frames are not this client's business), or bodiless
    length = _LENGTH.search(head)
    if length is not None:
        return len(body) >= int(length.group(1))
    if _CHUNKED.search(head):
        return body.endswith(b"0\r\n\r\n")
    return False  # the body ends when the server closes


@dataclass(frozen=True)
class RawAnswer:
    status: int | None  # None: closed (or timed out) with no status line
    data: bytes  # everything received: status line, headers, body


async def send_raw(port: int, head: bytes, body: bytes = b"", trickle: float = 0.0,
                   timeout: float = 10.0, half_close: bool = False) -> RawAnswer:
    """Send ``head`` then ``body`` (in 16-byte pieces ``trickle`` seconds apart, if set)
    to 127.0.0.1:``port``, and read the answer until the server closes, the head of a
    101 arrives, or ``timeout`` passes. ``half_close`` ends the request's side after
    the body (a body shorter than its Content-Length then never completes)."""
    received = b""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return RawAnswer(None, b"")
    try:
        async with asyncio.timeout(timeout):
            writer.write(head + (b"" if trickle else body))
            await writer.drain()
            if trickle:
                for start in range(0, len(body), 16):
                    await asyncio.sleep(trickle)
                    writer.write(body[start:start + 16])
                    await writer.drain()
            if half_close and writer.can_write_eof():
                writer.write_eof()
            while not _complete(received, head.startswith(b"HEAD ")):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                received += chunk
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    match = _STATUS.match(received)
    return RawAnswer(int(match.group(1)) if match else None, received)
