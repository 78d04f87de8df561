"""The edge, composed: authentication around the edge's own routes and the proxy.

    Authentication → EdgeRoutes (/_edge/…) → Proxy (wake, forward)

plus the lifespan: at start-up it warms the AWS clients, or (locally) creates the
admin and prints its password once; at shutdown it closes what it opened.

``edge.app:app`` is configured from the environment on first use, so any ASGI
server — uvicorn locally, Lambda Web Adapter, Mangum — can run it as it is.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from edge.auth import Authenticator
from edge.authentication import Authentication
from edge.links import UpstreamLinks
from edge.proxy import Proxy
from edge.routes import EdgeRoutes
from edge.session import SessionSigner
from edge.throttle import FailureThrottle
from edge.types import Receive, Scope, Send
from infra.backends import backends_for_requests
from infra.deadline import Deadline
from infra.interfaces import Backends
from infra.lifecycle import Lifecycle, process_owner
from infra.settings import Settings

log = logging.getLogger("ocedge.edge")


class Edge:
    """The ASGI application of one edge process, over one deployment's backends."""

    def __init__(self, settings: Settings, backends: Backends | None = None) -> None:
        self.settings = settings
        self.backends = backends or backends_for_requests(settings)
        owner = process_owner("edge")
        self.lifecycle = Lifecycle(self.backends.state, self.backends.compute, owner=owner,
                                   start_timeout=settings.start_timeout)
        self.links = UpstreamLinks(settings)
        proxy = Proxy(settings, self.backends.state, self.lifecycle, self.links,
                      Deadline(self.backends.state, settings.idle_timeout, writer=owner))
        authenticator = Authenticator(
            self.backends.keys, self.backends.pepper, SessionSigner(self.backends.session_secret),
            FailureThrottle(settings.auth_max_failures, settings.auth_window),
            cache_ttl=settings.key_cache_ttl)
        self.app = Authentication(EdgeRoutes(proxy, self.backends.state, settings),
                                  authenticator, settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("edge start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """On AWS, open the clients now rather than on the first request; locally,
        create the admin on first run (printing a generated password once)."""
        if self.settings.backend == "aws":
            await self.backends.warm()
        if self.settings.backend == "local":
            from infra.admin import ensure_admin

            password = await ensure_admin(self.settings, self.backends.keys)
            if password is not None:
                print_credentials(self.settings.admin_user, password)

    async def aclose(self) -> None:
        """Stop waiting for a wake, close the upstream links and the backends."""
        self.lifecycle.cancel()
        await self.links.aclose()
        await self.backends.aclose()


def print_credentials(user: str, password: str) -> None:
    # Printed once, to the terminal of whoever started the edge; never logged.
    sys.stderr.write(
        "\n  opencode-edge created the admin login (shown only this once):\n"
        f"    user:     {user}\n    password: {password}\n\n")
    sys.stderr.flush()


def create_app(settings: Settings | None = None, backends: Backends | None = None) -> Edge:
    """The edge for ``settings`` (default: from the environment), over ``backends``
    (default: the ones the settings name, for the request path)."""
    return Edge(settings or Settings.from_env(), backends)


_app: Edge | None = None


def __getattr__(name: str) -> Any:
    # ``edge.app:app`` is built from the environment when the server first asks.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
