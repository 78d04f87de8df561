"""The authentication layer: nothing reaches the edge's routes or the container
without an identity.

A pure ASGI layer, so http and websocket scopes get the same treatment. Without a
valid session cookie, API key or (programs only) Basic login:

- a browser loading a page is sent to the login page (303), which brings it back;
- a browser's background request gets 401 with no Basic challenge, so no browser
  ever shows a Basic prompt or caches Basic credentials;
- a program gets 401 with the Basic challenge, as opencode's own server answers;
- too many failures: 429 with Retry-After; not initialised: 503; a WebSocket is
  closed before it is accepted (an HTTP 403).

An authenticated request carries its :class:`Identity` on in the scope.
"""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from edge import pages
from edge.auth import Authenticator, AuthResult, Identity, read_credentials
from edge.login import login_location
from edge.request import (
    client_address,
    header_values,
    is_browser,
    is_secure,
    sends_fetch_metadata,
    wants_login_page,
)
from edge.session import session_cookie
from edge.types import ASGIApp, Receive, Scope, Send
from infra.settings import Settings

# Where the identity of an authenticated request is kept in its scope.
IDENTITY = "ocedge.identity"
# The edge's own paths anyone may call: the health check (the login and logout
# paths are answered before this layer).
OPEN_PATHS = frozenset({"/_edge/health"})


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
        secure = is_secure(scope, self.settings.cookie_secure, self.settings.trust_forwarded)
        browser = sends_fetch_metadata(scope)
        presented = read_credentials(scope["headers"],
                                     session_cookie(header_values(scope, b"cookie"), secure),
                                     basic=not browser)
        client = client_address(scope, self.settings.trust_forwarded, self.settings.web_adapter)
        result = await self.authenticator.authenticate(presented, client)
        if result.identity is None:
            await self._refuse(scope, receive, send, result, browser)
            return
        scope[IDENTITY] = result.identity
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send,
                      result: AuthResult, browser: bool) -> None:
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
        elif wants_login_page(scope):
            response = RedirectResponse(login_location(scope), 303,
                                        headers={"Cache-Control": "no-store"})
        elif result.failure == "totp_required":
            response = pages.error(
                scope, 401, "use_an_api_key",
                "Two-factor login is on, so the admin password alone is not accepted: "
                "log in with an API key (create one with `ocedge keys create`).",
                headers={"WWW-Authenticate": pages.REALM_CHALLENGE})
        else:
            message = ("Log in at /_edge/login, or send an API key (Authorization: Bearer, "
                       "X-API-Key, or as the Basic password).")
            if result.failure == "invalid":
                message = "Those credentials are not valid. " + message
            # Never a Basic challenge to a browser: it would prompt and cache the password.
            challenge = {} if browser or is_browser(scope) else {
                "WWW-Authenticate": pages.REALM_CHALLENGE}
            response = pages.error(scope, 401, "unauthorized", message,
                                   title="Log in to opencode-edge",
                                   headers={"Cache-Control": "no-store", **challenge})
        await response(scope, receive, send)
