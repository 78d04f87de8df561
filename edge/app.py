"""The edge, composed: browser defences, the login page, authentication, then the
edge's own routes and the proxy.

    NoFraming → [CloudFrontOrigin → TerminalTickets] → SameOrigin → Login (/_edge/login, …)
        → Authentication → EdgeRoutes (/_edge/…) → Landing (first `/`) → Proxy (wake, forward)

The bracketed layers only on AWS's streaming front door (OCEDGE_ORIGIN_SECRET): refuse
what did not come through the distribution, hand the rest on as the viewer sent it, and
sign the terminal tickets the container's terminal listener will take.

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
from edge.cloudfront import CloudFrontOrigin
from edge.framing import NoFraming
from edge.landing import Landing
from edge.links import UpstreamLinks
from edge.login import Login
from edge.logs import quiet_credential_logs
from edge.origin import SameOrigin
from edge.proxy import Proxy
from edge.routes import EdgeRoutes
from edge.session import SessionSigner
from edge.stream_deadline import StreamDeadline
from edge.terminal_tickets import TerminalTickets
from edge.throttle import FailureThrottle
from edge.types import ASGIApp, Receive, Scope, Send
from infra.backends import backends_for_requests
from infra.deadline import Deadline
from infra.interfaces import Backends
from infra.lifecycle import Lifecycle, process_owner
from infra.settings import Settings

log = logging.getLogger("ocedge.edge")


class Edge:
    """The ASGI application of one edge process, over one deployment's backends."""

    def __init__(self, settings: Settings, backends: Backends | None = None) -> None:
        # Before anything can log a header: no credential in any log line.
        quiet_credential_logs()
        self.settings = settings
        self.backends = backends or backends_for_requests(settings)
        owner = process_owner("edge")
        self.lifecycle = Lifecycle(self.backends.state, self.backends.compute, owner=owner,
                                   start_timeout=settings.start_timeout)
        self.links = UpstreamLinks(settings)
        proxy = Proxy(settings, self.backends.state, self.lifecycle, self.links,
                      Deadline(self.backends.state, settings.idle_timeout, writer=owner))
        keys = self.backends.keys
        # The edge's secrets as read now; re-read as they age (_follow_rotation).
        self._secrets = self.backends.edge_secrets
        authenticator = Authenticator(
            keys, self._secrets.peppers,
            SessionSigner(self._secrets.session_secret, settings.session_ttl),
            FailureThrottle(keys, settings.auth_max_failures, settings.auth_window,
                            settings.auth_max_failures_global),
            session_secret=self._secrets.session_secret, cache_ttl=settings.key_cache_ttl)
        self.authenticator = authenticator
        # On the streaming front door, event streams end before their invocation does.
        routes = EdgeRoutes(Landing(StreamDeadline(proxy), self.lifecycle, settings),
                            self.backends.state, settings)
        app: ASGIApp = SameOrigin(
            Login(Authentication(routes, authenticator, settings), authenticator, settings),
            settings)
        if settings.origin_secret:
            app = CloudFrontOrigin(TerminalTickets(app, settings.origin_secret),
                                   settings.origin_secret)
        self.app = NoFraming(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self._follow_rotation()
            await self.app(scope, receive, send)

    async def _follow_rotation(self) -> None:
        """Re-read the edge's secrets every OCEDGE_KEY_CACHE_TTL seconds, so `ocedge
        admin rotate-secrets` reaches this process (infra/rotation.py waits that long)."""
        fresh = await self.backends.secrets.fresh_edge(self.settings.key_cache_ttl)
        if fresh != self._secrets:
            self._secrets = fresh
            self.authenticator.use_secrets(fresh.peppers, fresh.session_secret)

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
