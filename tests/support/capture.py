"""A real upstream for edge tests: records what the edge forwards and answers like
opencode's transports do (JSON, an event stream, a slow chunked body, a terminal
WebSocket), so forwarding can be tested without opencode.

Run it with :func:`running_capture` and point an edge at it with :func:`attach_upstream`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from infra.interfaces import ContainerState
from infra.lifecycle import Lifecycle
from infra.net import free_port
from tests.support.edge import EdgeServer

# The internal credential the fake container registers; the edge must send it upstream.
INTERNAL_SECRET = "internal-secret"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_BLOCK = bytes(range(256)) * 256  # 64 KiB


def big_body(size: int) -> Iterator[bytes]:
    """The deterministic body ``/big?size=N`` answers with, in 64 KiB chunks."""
    sent = 0
    while sent < size:
        chunk = _BLOCK[: min(len(_BLOCK), size - sent)]
        sent += len(chunk)
        yield chunk


@dataclass(frozen=True)
class Captured:
    """One request as the upstream received it."""

    method: str  # "WEBSOCKET" for a WebSocket handshake
    path: str
    raw_path: str  # as sent on the wire, percent-encoding intact
    query: str  # raw query string
    headers: list[tuple[str, str]]  # (lower-case name, value), in order, repeats kept
    body: bytes
    body_size: int
    body_sha256: str

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]

    @property
    def header_names(self) -> set[str]:
        return {key for key, _ in self.headers}


class CaptureServer:
    """The upstream on 127.0.0.1:<port>, served by uvicorn in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Captured] = []
        # SSE stream tag → [(event number, monotonic time it was emitted)].
        self.emitted: dict[str, list[tuple[int, float]]] = {}
        # SSE stream tag → "completed" or "cancelled" (the client went away).
        self.sse_outcomes: dict[str, str] = {}
        # Chunks of /slow: [(chunk number, monotonic time it was emitted)].
        self.slow_emitted: list[tuple[int, float]] = []
        # WebSocket ends as ("client", code) when the edge closed it, ("server", code) when we did.
        self.ws_closes: list[tuple[str, int | None]] = []
        self._lock = threading.Lock()
        app = Starlette(routes=[
            Route("/global/event", self._events, methods=["GET"]),
            Route("/slow", self._slow, methods=["GET"]),
            Route("/big", self._big, methods=["GET"]),
            Route("/challenge", self._challenge, methods=["GET"]),
            WebSocketRoute("/pty/{id}/connect", self._pty),
            Route("/{path:path}", self._echo, methods=_METHODS),
        ])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> CaptureServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the capture upstream did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    # -- reading what was captured ----------------------------------------------

    def last(self, path: str | None = None) -> Captured:
        with self._lock:
            for captured in reversed(self.requests):
                if path is None or captured.path == path:
                    return captured
        raise AssertionError(f"the upstream received no request for {path or 'any path'}")

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()

    # -- recording ---------------------------------------------------------------

    def _store(self, scope: dict[str, object], method: str, body: bytes) -> Captured:
        raw_headers = scope["headers"]
        assert isinstance(raw_headers, list)
        raw_path = scope.get("raw_path") or str(scope["path"]).encode()
        assert isinstance(raw_path, bytes)
        query = scope.get("query_string") or b""
        assert isinstance(query, bytes)
        captured = Captured(
            method=method, path=str(scope["path"]), raw_path=raw_path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=[(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw_headers],
            body=body, body_size=len(body), body_sha256=hashlib.sha256(body).hexdigest())
        with self._lock:
            self.requests.append(captured)
        return captured

    async def _record(self, request: Request) -> Captured:
        chunks = [chunk async for chunk in request.stream()]
        return self._store(dict(request.scope), request.method, b"".join(chunks))

    # -- endpoints ---------------------------------------------------------------

    async def _echo(self, request: Request) -> Response:
        captured = await self._record(request)
        return JSONResponse({"method": captured.method, "path": captured.path,
                             "raw_path": captured.raw_path, "query": captured.query,
                             "body_size": captured.body_size,
                             "body_sha256": captured.body_sha256})

    async def _events(self, request: Request) -> Response:
        await self._record(request)
        tag = request.query_params.get("tag", "")
        count = int(request.query_params.get("count", "100"))
        interval = float(request.query_params.get("interval", "0.1"))
        with self._lock:
            self.emitted[tag] = []

        async def events() -> AsyncIterator[bytes]:
            done = False
            try:
                for n in range(count):
                    if n:
                        await asyncio.sleep(interval)
                    with self._lock:
                        self.emitted[tag].append((n, time.monotonic()))
                    yield f"data: {json.dumps({'n': n})}\n\n".encode()
                done = True
            finally:
                # Cancelled (or closed) before the end: the client went away.
                with self._lock:
                    self.sse_outcomes[tag] = "completed" if done else "cancelled"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _slow(self, request: Request) -> Response:
        await self._record(request)
        count = int(request.query_params.get("count", "5"))
        interval = float(request.query_params.get("interval", "0.3"))

        async def chunks() -> AsyncIterator[bytes]:
            for n in range(count):
                if n:
                    await asyncio.sleep(interval)
                with self._lock:
                    self.slow_emitted.append((n, time.monotonic()))
                yield f"chunk {n}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def _big(self, request: Request) -> Response:
        await self._record(request)
        size = int(request.query_params.get("size", str(20 * 1024 * 1024)))

        async def body() -> AsyncIterator[bytes]:
            for chunk in big_body(size):
                yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream",
                                 headers={"Content-Length": str(size)})

    async def _challenge(self, request: Request) -> Response:
        await self._record(request)
        return Response("upstream wants a password", status_code=401,
                        headers={"WWW-Authenticate": 'Basic realm="opencode"'})

    async def _pty(self, websocket: WebSocket) -> None:
        """Echo text and bytes; a text ``close:<code>`` makes the upstream close."""
        self._store(dict(websocket.scope), "WEBSOCKET", b"")
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                with self._lock:
                    self.ws_closes.append(("client", message.get("code")))
                return
            text = message.get("text")
            data = message.get("bytes")
            if text is not None and text.startswith("close:"):
                code = int(text.removeprefix("close:"))
                with self._lock:
                    self.ws_closes.append(("server", code))
                await websocket.close(code)
                return
            if text is not None:
                await websocket.send_text(text)
            elif data is not None:
                await websocket.send_bytes(data)


@contextmanager
def running_capture() -> Iterator[CaptureServer]:
    server = CaptureServer().start()
    try:
        yield server
    finally:
        server.stop()


def attach_upstream(edge: EdgeServer, port: int,
                    credential: str = INTERNAL_SECRET) -> ContainerState:
    """Register 127.0.0.1:<port> as the running container, as the container does at boot."""
    lifecycle = Lifecycle(edge.edge.backends.state, owner="test")
    state: ContainerState = edge.run(lifecycle.register_running(
        f"127.0.0.1:{port}", credential, None, 600))
    return state


def event_arrivals(url: str, count: int = 3, **request: Any) -> list[float]:
    """Open an event stream at ``url`` and note when each of its first ``count``
    events arrives (monotonic clock). Buffering would make them arrive together."""
    arrivals: list[float] = []
    headers = {"Accept": "text/event-stream", **request.pop("headers", {})}
    with httpx.stream("GET", url, headers=headers, timeout=10, **request) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
            if len(arrivals) == count:
                break
    return arrivals
