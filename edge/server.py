"""How the edge is served under uvicorn: the HTTP protocol, and a server that
stops cleanly on SIGINT, SIGTERM and SIGHUP.

``HttpProtocol`` is uvicorn's httptools protocol, writing each response head
together with the start of its body: one send(2) and one TCP segment per answer
instead of two.

A py-spy profile of the edge at 16 connections had 43% of its CPU in uvicorn's
``RequestResponseCycle.send``: its two socket writes per response, each one
also paying for the loopback delivery to the client. Used with
``uvicorn --http edge.server:HttpProtocol`` (``ocedge dev``, the Lambda Web
Adapter script, the benchmark and the tests all run the edge so).

The head is held only until the end of the current event-loop iteration: an
answer whose body comes later (an event stream) still gets its head at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadWithBody:
    """The response's transport for uvicorn's cycle: holds the first write (the
    head, or a 100 Continue) and sends it with the next one."""

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self.flush)
            return
        if self._held is not None:
            data, self._held = self._held + data, None
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        # close(), is_closing(), ...: whatever is held goes out first.
        self.flush()
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`_HeadWithBody` under each response."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:
            self.cycle.transport = _HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]


# What stops a foreground edge (`ocedge dev`): Ctrl-C, a process manager or `kill`
# (SIGTERM), a closed terminal (SIGHUP).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Server(uvicorn.Server):
    """uvicorn's server, stopped gracefully by any of STOP_SIGNALS, after which
    ``run()`` returns (``stopped_by`` names the signal) so its caller can clean up:
    ``ocedge dev`` stops the container, which runs in a session of its own and would
    otherwise outlive the edge. uvicorn's own handling raises SIGTERM again once
    the server is down, ending the process before any clean-up, and lets SIGHUP
    kill it outright."""

    stopped_by: int | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._stop) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True  # a second signal: do not wait for open connections
        self.should_exit = True
        self.stopped_by = signum
