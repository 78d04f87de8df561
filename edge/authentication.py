"""The authentication layer: nothing reaches the edge's routes or the container
without an identity.

A pure ASGI layer, so http and websocket scopes get the same treatment: 401 (with
the Basic challenge), 429 (too many failures, with Retry-After) or 503 (not
initialised) — a WebSocket is closed before it is accepted. An authenticated
request carries its :class:`Identity` on in the scope; a browser that logged in
with a password or key gets the session cookie on its response, so EventSource
and WebSockets (which cannot send Authorization) work after a login.
"""

from __future__ import annotations

import time

from starlette.responses import Response

from edge import pages
from edge.auth import Authenticator, AuthResult, Identity, read_credentials
from edge.request import client_address, is_browser, is_secure
from edge.session import set_cookie_header
from edge.types import ASGIApp, Message, Receive, Scope, Send
from infra.settings import Settings

# Where the identity of an authenticated request is kept in its scope.
IDENTITY = "ocedge.identity"
# The edge's own paths anyone may call: the health check and logging out.
OPEN_PATHS = frozenset({"/_edge/health", "/_edge/logout"})


def identity_of(scope: Scope) -> Identity:
    """The identity the authentication layer found for this request."""
    identity: Identity = scope[IDENTITY]
    return identity


class Authentication:
    """Answers for the layer inside it until the request has an identity."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, settings: Settings) -> None:
        self.app = app
        self.authenticator = authenticator
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = read_credentials(dict(scope["headers"]))
        result = await self.authenticator.authenticate(
            presented, client_address(scope, self.settings.trust_forwarded))
        if result.identity is None:
            await self._refuse(scope, receive, send, result)
            return
        scope[IDENTITY] = result.identity
        if scope["type"] == "http" and result.identity.method != "cookie" \
                and is_browser(scope):
            send = self._with_cookie(scope, send, result.identity)
        await self.app(scope, receive, send)

    def _with_cookie(self, scope: Scope, send: Send, identity: Identity) -> Send:
        """``send``, adding a session cookie to the response's headers."""
        ttl = self.settings.session_ttl
        secure = is_secure(scope, self.settings.cookie_secure, self.settings.trust_forwarded)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                session = self.authenticator.session_for(identity, ttl, time.time())
                cookie = set_cookie_header(self.authenticator.signer.issue(session), int(ttl), secure)
                message = {**message,
                           "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return send_with_cookie

    async def _refuse(self, scope: Scope, receive: Receive, send: Send,
                      result: AuthResult) -> None:
        if scope["type"] == "websocket":
            # Before accept, a close is an HTTP 403 to the client.
            await send({"type": "websocket.close", "code": 1008})
            return
        response: Response
        if result.failure == "uninitialised":
            response = pages.error(
                scope, 503, "not_initialised",
                "This opencode-edge deployment is not initialised yet: set the admin "
                "password with `ocedge init` (or start it locally with `ocedge dev`).",
                headers={"Retry-After": "30"})
        elif result.failure == "throttled":
            response = pages.error(
                scope, 429, "too_many_failures",
                f"Too many failed logins from your address. Try again in "
                f"{result.retry_after} seconds.",
                headers={"Retry-After": str(result.retry_after)})
        else:
            message = ("Log in with the admin user and password, or an API key "
                       "(Authorization: Bearer, X-API-Key, or as the Basic password).")
            if result.failure == "invalid":
                message = "Those credentials are not valid. " + message
            response = pages.error(
                scope, 401, "unauthorized", message, title="Log in to opencode-edge",
                headers={"WWW-Authenticate": pages.REALM_CHALLENGE})
        await response(scope, receive, send)
