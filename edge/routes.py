"""The edge's own paths under /_edge/; every other path goes on to the proxy.

/_edge/health and /_edge/logout are open to anyone (the authentication layer lets
them through); /_edge/status needs a login and is what the waking page polls.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from edge import pages
from edge.request import is_secure
from edge.session import clear_cookie_header
from edge.types import ASGIApp, Receive, Scope, Send
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
        elif path == "/_edge/logout":
            response = pages.page(
                "Logged out", "Your opencode-edge session has ended. Close the browser "
                "window to forget a saved password.", 200)
            secure = is_secure(scope, self.settings.cookie_secure, self.settings.trust_forwarded)
            response.raw_headers.append((b"set-cookie", clear_cookie_header(secure)))
            await response(scope, receive, send)
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
        }
        await JSONResponse(body, headers={"Cache-Control": "no-store"})(scope, receive, send)
