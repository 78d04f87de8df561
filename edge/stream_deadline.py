"""Event streams end before the invocation that carries them does.

On the streaming front door an event stream lives exactly as long as its Lambda
invocation: "For a streaming response, the timeout bounds the whole stream. When the
timeout elapses, Lambda ends the stream" with a truncated body
(docs.aws.amazon.com/lambda/latest/dg/web-functions-revisions-timeout.html). Lambda
does not tell the function when the client goes away, so a closed tab's stream runs
(and bills, and holds a concurrency slot and a connection to the container) until
then. This layer ends an event stream cleanly — the chunked body's last, empty chunk,
after which the UI's EventSource reconnects — in two cases:

- ``margin`` seconds before the invocation's deadline, which Lambda Web Adapter hands
  the app in the ``x-amzn-lambda-context`` header: the Lambda context as JSON, its
  ``deadline`` in milliseconds since the epoch (awslabs.github.io/aws-lambda-web-adapter,
  "Request & Lambda Context"; the adapter's src/lib.rs serialises lambda_runtime's
  ``Context``, whose field is ``deadline``);
- when the container goes silent for ``silence`` seconds: opencode sends a
  ``server.heartbeat`` event every 10 s, and an instance that powered off sends no FIN,
  so silence is how a stream learns its container is gone.

Only requests that carry that header (the streaming front door) are watched; the
header is taken off before the request goes on (it describes the function, not the
client). Pure ASGI: it wraps ``send`` and ``receive`` and leaves forwarding alone —
the forwarder stops when ``receive`` reports the client gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from edge.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("ocedge.edge")

LAMBDA_CONTEXT = b"x-amzn-lambda-context"
# End a stream this long before the invocation's deadline: time for the last chunk
# to reach the client through the adapter and the Function URL.
MARGIN = 10.0
# No byte from the container for this long (opencode's heartbeat is every 10 s): gone.
SILENCE = 45.0


def invocation_deadline(scope: Scope) -> float | None:
    """The invocation's deadline (seconds since the epoch) from Lambda Web Adapter's
    context header; None without one, or with one that makes no sense."""
    for name, value in scope["headers"]:
        if name != LAMBDA_CONTEXT:
            continue
        if len(value) > 8192:
            return None
        try:
            context = json.loads(value)
        except ValueError:
            return None
        if not isinstance(context, dict):
            return None
        millis = context.get("deadline", context.get("deadline_ms"))
        if isinstance(millis, bool) or not isinstance(millis, int | float):
            return None
        deadline = float(millis) / 1000
        # A Lambda invocation lasts at most 15 minutes; anything far off is not one.
        return deadline if abs(deadline - time.time()) < 86400 else None
    return None


def _is_event_stream(message: Message) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
               for name, value in message.get("headers", []))


class StreamDeadline:
    """Ends event streams before their invocation's deadline, or once their container
    has gone silent (see the module docstring)."""

    def __init__(self, app: ASGIApp, margin: float = MARGIN, silence: float = SILENCE,
                 clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.margin = margin
        self.silence = silence
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = invocation_deadline(scope)
        headers = [(n, v) for n, v in scope["headers"] if n != LAMBDA_CONTEXT]
        if len(headers) != len(scope["headers"]):
            scope = {**scope, "headers": headers}
        if deadline is None:
            await self.app(scope, receive, send)
            return
        await _WatchedStream(self, deadline, receive, send).run(scope)


class _WatchedStream:
    """One request on the streaming front door: if its answer is an event stream,
    end it in time."""

    def __init__(self, layer: StreamDeadline, deadline: float, receive: Receive,
                 send: Send) -> None:
        self.layer = layer
        self.deadline = deadline
        self._receive = receive
        self._send = send
        self.ended = asyncio.Event()  # we ended the stream: the client counts as gone
        self.finished = False  # the response's last message went out
        self.last_byte = time.monotonic()
        self.lock = asyncio.Lock()
        self.watcher: asyncio.Task[None] | None = None

    async def run(self, scope: Scope) -> None:
        try:
            await self.layer.app(scope, self.receive, self.send)
        finally:
            if self.watcher is not None:
                self.watcher.cancel()

    async def send(self, message: Message) -> None:
        async with self.lock:
            if self.finished:
                return  # we ended the stream; what the app still sends has nowhere to go
            if message["type"] == "http.response.start" and _is_event_stream(message):
                self.watcher = asyncio.ensure_future(self._watch())
            elif message["type"] == "http.response.body":
                self.last_byte = time.monotonic()
                self.finished = not message.get("more_body", False)
            await self._send(message)

    async def receive(self) -> Message:
        if self.ended.is_set():
            return {"type": "http.disconnect"}
        incoming = asyncio.ensure_future(self._receive())
        ending = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({incoming, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
        if incoming.done():
            message: Message = incoming.result()
            return message
        incoming.cancel()
        return {"type": "http.disconnect"}

    async def _watch(self) -> None:
        layer = self.layer
        while True:
            until_deadline = self.deadline - layer.margin - layer.clock()
            until_silent = layer.silence - (time.monotonic() - self.last_byte)
            wait = min(until_deadline, until_silent)
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        why = (f"the invocation ends in {self.deadline - layer.clock():.0f} s"
               if until_deadline <= 0 else
               f"the container sent nothing for {layer.silence:.0f} s")
        log.info("ending an event stream cleanly: %s (the client reconnects)", why)
        async with self.lock:
            if not self.finished:
                self.finished = True
                await self._send({"type": "http.response.body", "body": b"",
                                  "more_body": False})
        self.ended.set()
