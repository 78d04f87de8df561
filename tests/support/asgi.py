"""Driving one ASGI layer of the edge in-process: an inner app that records what reached
it, and a call that hands a scope to a layer and collects what it sent back."""

from __future__ import annotations

import asyncio

from edge.types import ASGIApp, Message, Receive, Scope, Send


class Recorder:
    """The layer inside: answers 200 (with opencode's kind of CSP when given) or
    accepts the WebSocket, and remembers every scope it was called with."""

    def __init__(self, csp: bytes | None = None) -> None:
        self.scopes: list[Scope] = []
        self.csp = csp

    @property
    def calls(self) -> int:
        return len(self.scopes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        headers = [(b"content-type", b"text/plain")]
        if self.csp is not None:
            headers += [(b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", self.csp)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


def call_layer(app: ASGIApp, scope: Scope) -> list[Message]:
    """Run ``app`` on ``scope`` (an empty body, or a WebSocket connect); what it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"} if scope["type"] == "websocket" else \
            {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent
