"""The buffered front door: AWS Lambda behind an API Gateway HTTP API, via Mangum.

Mangum buffers whole responses, so an event stream can never reach the client
through it: those requests get a clear 501 that names the streaming front door
(the Function URL) instead of hanging until the API Gateway timeout.
"""

from __future__ import annotations

from typing import Any

from mangum import Mangum
from starlette.responses import JSONResponse

from edge.app import create_app
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


def build_handler(settings: Settings | None = None) -> Mangum:
    settings = settings or Settings.from_env()
    app = BufferedFrontDoor(create_app(settings), settings.stream_url)
    return Mangum(app, lifespan="auto")


_handler: Mangum | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (edge.lambda_api.handler)."""
    global _handler
    if _handler is None:
        _handler = build_handler()
    result: dict[str, Any] = _handler(event, context)
    return result
