"""The buffered front door: AWS Lambda behind an API Gateway HTTP API, via Mangum.

Mangum buffers whole responses, so an event stream can never reach the client
through it: those requests get a clear 501 that names the streaming front door
(the Function URL) instead of hanging until the API Gateway timeout.

The edge starts once per cold start, not per request: Mangum's default lifespan
mode ("auto") runs the app's ASGI start-up and shut-down around every invocation
(mangum 0.22, adapter.py: ``Mangum.__call__`` enters a ``LifespanCycle`` for "auto"
and "on"), which would rebuild the AWS clients and the pinned TLS link each time and
cancel a wake in progress when the invocation ends. So the handler runs with
``lifespan="off"`` and starts the edge itself, once, on the event loop every
invocation runs on (``HTTPCycle`` uses ``asyncio.get_event_loop()``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mangum import Mangum
from starlette.responses import JSONResponse

from edge.app import Edge, create_app
from edge.request import wants_event_stream
from edge.types import ASGIApp, Receive, Scope, Send
from infra.settings import Settings


class BufferedFrontDoor:
    """Refuses event streams with 501 before they reach the edge; passes the rest."""

    def __init__(self, app: ASGIApp, stream_url: str | None) -> None:
        self.app = app
        self.stream_url = stream_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and wants_event_stream(scope):
            where = (f"Use the streaming URL {self.stream_url}" if self.stream_url
                     else "Use the deployment's streaming URL (the WebUrl stack output)")
            response = JSONResponse(
                {"error": "streaming_not_supported",
                 "message": f"This API endpoint buffers responses and cannot stream "
                            f"events. {where} for {scope['path']}.",
                 "stream_url": self.stream_url},
                status_code=501)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_handler(settings: Settings | None = None, edge: Edge | None = None) -> Mangum:
    """The Mangum handler over ``edge`` (default: built from ``settings``), started now."""
    settings = settings or Settings.from_env()
    edge = edge or create_app(settings)
    handler = Mangum(BufferedFrontDoor(edge, settings.stream_url), lifespan="off")
    # Mangum made sure this thread has an event loop; every invocation runs on it.
    asyncio.get_event_loop().run_until_complete(edge.startup())
    return handler


_handler: Mangum | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (edge.lambda_api.handler)."""
    global _handler
    if _handler is None:
        _handler = build_handler()
    result: dict[str, Any] = _handler(event, context)
    return result
