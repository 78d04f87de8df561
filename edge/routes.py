"""The edge's own paths under /_edge/; every other path goes on to the proxy.

/_edge/health is open to anyone (the authentication layer lets it through);
/_edge/status needs a login and is what the waking page polls. The login and
logout paths are answered before authentication, by :mod:`edge.login`.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.responses import JSONResponse

from edge import pages
from edge.types import ASGIApp, Receive, Scope, Send
from infra import progress
from infra.interfaces import StateStore
from infra.settings import Settings

PREFIX = "/_edge/"


class EdgeRoutes:
    """Answers the edge's own paths; passes the rest to ``app``."""

    def __init__(self, app: ASGIApp, state: StateStore, settings: Settings) -> None:
        self.app = app
        self.state = state
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        if path == "/_edge/health":
            await JSONResponse({"ok": True})(scope, receive, send)
        elif path == "/_edge/status":
            await self._status(scope, receive, send)
        else:
            await pages.error(scope, 404, "not_found", f"No such edge path: {path}")(
                scope, receive, send)

    async def _status(self, scope: Scope, receive: Receive, send: Send) -> None:
        current = await self.state.get()
        body: dict[str, Any] = {
            "status": current.status,
            "since": current.since,
            "generation": current.generation,
            "deadline": current.deadline,
            "busy": current.busy,
            "reason": current.reason,
            # The steps of the start, for the waking page (infra/progress.py).
            "steps": [step.as_dict() for step in progress.report(current, time.time())],
        }
        await JSONResponse(body, headers={"Cache-Control": "no-store"})(scope, receive, send)
