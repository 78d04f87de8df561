"""The edge as one ASGI application: authenticate, find (or wake) the container, forward.

``edge.app:app`` is configured from the environment on first use, so any ASGI
server — uvicorn locally, Lambda Web Adapter, Mangum — can run it as it is.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from typing import TYPE_CHECKING, Any

from starlette.responses import HTMLResponse, JSONResponse, Response

from edge import responses
from edge.auth import Authenticator, AuthResult, Identity, read_credentials
from edge.intent import ACTIVITY, BACKGROUND, classify, is_navigation
from edge.session import SessionSigner, clear_cookie_header, set_cookie_header
from edge.throttle import FailureThrottle
from edge.types import Receive, Scope, Send

if TYPE_CHECKING:
    import httpx

    from edge.proxy import HttpForwarder
from edge.wake import Waker
from edge.waking import waking_page
from infra.backends import Backends, open_backends
from infra.interfaces import FAILED, RUNNING, STOPPED, STOPPING, ContainerState
from infra.lifecycle import Deadline
from infra.settings import Settings

log = logging.getLogger("ocedge.edge")

# A running state is re-read at most this often on the request path.
_STATE_TTL = 1.0


def _client_address(scope: Scope, trust_forwarded: bool) -> str:
    if trust_forwarded:
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                return str(value.split(b",")[0].strip().decode("latin-1"))
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _is_browser(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name.startswith(b"sec-fetch-"):
            return True
        if name == b"user-agent" and value.startswith(b"Mozilla/"):
            return True
    return False


class Edge:
    """The ASGI application. Holds one pooled HTTP client for the process."""

    def __init__(self, settings: Settings, backends: Backends | None = None) -> None:
        self.settings = settings
        # aiobotocore on the request path: one async AWS client per process.
        self.backends = backends or open_backends(settings, aws_client="aiobotocore")
        self.signer = SessionSigner(self.backends.session_secret)
        self.auth = Authenticator(
            self.backends.keys, self.backends.pepper, self.signer,
            FailureThrottle(settings.auth_max_failures, settings.auth_window),
            cache_ttl=settings.key_cache_ttl)
        self.waker = Waker(self.backends.state, self.backends.compute,
                           start_timeout=settings.opencode_start_timeout + 30)
        self._client: httpx.AsyncClient | None = None
        self._forwarder: HttpForwarder | None = None
        # The pinned TLS link to the current generation's container, if it has one.
        self._pinned: tuple[int, HttpForwarder, ssl.SSLContext] | None = None
        self._state: tuple[float, ContainerState] | None = None
        self.deadline = Deadline(self.backends.state, settings.idle_timeout,
                                 writer=self.waker.owner)
        self._tasks: set[asyncio.Task[bool]] = set()
        self._refresh: asyncio.Future[ContainerState] | None = None

    # -- plumbing ---------------------------------------------------------------

    @property
    def forwarder(self) -> HttpForwarder:
        if self._forwarder is None:
            # httpx is imported on the first forwarded request, not at start-up:
            # the health check a Lambda front door runs first does not need it.
            import httpx

            from edge.proxy import HttpForwarder

            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100,
                                    keepalive_expiry=30), trust_env=False)
            self._client = httpx.AsyncClient(transport=transport, trust_env=False)
            self._forwarder = HttpForwarder(
                transport, self.settings.upstream_read_timeout,
                self.settings.upstream_connect_timeout, self.settings.trust_forwarded)
        return self._forwarder

    async def _pinned_link(self, current: ContainerState) -> tuple[HttpForwarder, ssl.SSLContext]:
        """A forwarder whose TLS trusts only ``current``'s registered certificate;
        a new generation gets a new one, and the old link is closed."""
        if self._pinned is not None and self._pinned[0] == current.generation:
            return self._pinned[1], self._pinned[2]
        import httpx

        from edge.proxy import HttpForwarder, pinned_context

        context = pinned_context(current.cert_pem or "")
        transport = httpx.AsyncHTTPTransport(
            verify=context, trust_env=False,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100,
                                keepalive_expiry=30))
        forwarder = HttpForwarder(transport, self.settings.upstream_read_timeout,
                                  self.settings.upstream_connect_timeout,
                                  self.settings.trust_forwarded)
        old, self._pinned = self._pinned, (current.generation, forwarder, context)
        if old is not None:
            await old[1].transport.aclose()
        return forwarder, context

    async def aclose(self) -> None:
        self.waker.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._forwarder = None
        if self._pinned is not None:
            await self._pinned[1].transport.aclose()
            self._pinned = None
        await self.backends.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"].startswith("/_edge/"):
            await self._own(scope, receive, send)
        else:
            await self._proxy(scope, receive, send)

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
        """Local mode creates the admin on first run (printing a generated password once)."""
        if self.settings.backend == "aws":
            # Import aiobotocore and make its clients now, not on the first request.
            await self.backends.warm()
        if self.settings.backend == "local":
            from infra.admin import ensure_admin

            password = await ensure_admin(self.settings, self.backends.keys)
            if password is not None:
                print_credentials(self.settings.admin_user, password)

    async def state(self) -> ContainerState:
        """The state item; a running one is cached briefly and refreshed by one
        request at a time, however many are in flight."""
        now = time.monotonic()
        if self._state is not None and now - self._state[0] < _STATE_TTL:
            return self._state[1]
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._read_state())
        return await asyncio.shield(self._refresh)

    async def _read_state(self) -> ContainerState:
        current = await self.backends.state.get()
        self._state = (time.monotonic(), current) if current.status == RUNNING else None
        return current

    def _secure(self, scope: Scope) -> bool:
        if self.settings.cookie_secure != "auto":
            return self.settings.cookie_secure == "true"
        if scope.get("scheme") in ("https", "wss"):
            return True
        if self.settings.trust_forwarded:
            for name, value in scope["headers"]:
                if name == b"x-forwarded-proto":
                    return bool(value.strip().lower() == b"https")
        return False

    # -- authentication ----------------------------------------------------------

    async def _authenticate(self, scope: Scope) -> AuthResult:
        headers = dict(scope["headers"])
        presented = read_credentials(headers)
        return await self.auth.authenticate(
            presented, _client_address(scope, self.settings.trust_forwarded))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send,
                      result: AuthResult) -> None:
        if scope["type"] == "websocket":
            # Before accept, a close is an HTTP 403 to the client.
            await send({"type": "websocket.close", "code": 1008})
            return
        response: Response
        if result.failure == "uninitialised":
            response = responses.error(
                scope, 503, "not_initialised",
                "This opencode-edge deployment is not initialised yet: set the admin "
                "password with `ocedge init` (or start it locally with `ocedge dev`).",
                headers={"Retry-After": "30"})
        elif result.failure == "throttled":
            response = responses.error(
                scope, 429, "too_many_failures",
                f"Too many failed logins from your address. Try again in "
                f"{result.retry_after} seconds.",
                headers={"Retry-After": str(result.retry_after)})
        else:
            message = ("Log in with the admin user and password, or an API key "
                       "(Authorization: Bearer, X-API-Key, or as the Basic password).")
            if result.failure == "invalid":
                message = "Those credentials are not valid. " + message
            response = responses.error(
                scope, 401, "unauthorized", message, title="Log in to opencode-edge",
                headers={"WWW-Authenticate": responses.REALM_CHALLENGE})
        await response(scope, receive, send)

    def _cookie_for(self, scope: Scope, identity: Identity) -> list[tuple[bytes, bytes]]:
        if identity.method == "cookie" or not _is_browser(scope):
            return []
        now = time.time()
        value = self.signer.issue(self.auth.session_for(identity, self.settings.session_ttl, now))
        return [(b"set-cookie", set_cookie_header(
            value, int(self.settings.session_ttl), self._secure(scope)))]

    # -- the edge's own paths -----------------------------------------------------

    async def _own(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        if path == "/_edge/health":
            await JSONResponse({"ok": True})(scope, receive, send)
            return
        if path == "/_edge/logout":
            response = responses.page(
                "Logged out", "Your opencode-edge session has ended. Close the browser "
                "window to forget a saved password.", 200)
            response.raw_headers.append(
                (b"set-cookie", clear_cookie_header(self._secure(scope))))
            await response(scope, receive, send)
            return
        result = await self._authenticate(scope)
        if result.identity is None:
            await self._refuse(scope, receive, send, result)
            return
        if path == "/_edge/status":
            current = await self.backends.state.get()
            body: dict[str, Any] = {
                "status": current.status,
                "since": current.since,
                "generation": current.generation,
                "deadline": current.deadline,
                "busy": current.busy,
                "reason": current.reason,
            }
            await JSONResponse(body, headers={"Cache-Control": "no-store"})(
                scope, receive, send)
            return
        await responses.error(scope, 404, "not_found", f"No such edge path: {path}")(
            scope, receive, send)

    # -- forwarding ---------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        result = await self._authenticate(scope)
        if result.identity is None:
            await self._refuse(scope, receive, send, result)
            return
        intent = classify(scope)
        # An activity request that finds the container gone (it fell asleep since
        # the cached state was read) may take the wake path once more, if none of
        # its body was read yet.
        retry = intent == ACTIVITY and scope["type"] == "http"
        current = await self.state()
        while True:
            if current.status != RUNNING or not current.endpoint:
                if intent == BACKGROUND:
                    # An open tab's polls must not wake a sleeping container.
                    await self._not_ready(scope, receive, send, current, result.identity)
                    return
                current = await self.waker.ensure_running(self.settings.wake_wait)
                self._state = None
                if current.status != RUNNING or not current.endpoint:
                    await self._not_ready(scope, receive, send, current, result.identity)
                    return
            elif intent == ACTIVITY:
                self.renew(current)
            replayable = await self._forward(scope, receive, send, current, result.identity)
            if replayable is None:
                return
            fresh = await self.backends.state.get()
            # Only a container that went to sleep (or was replaced) meanwhile is
            # woken again; a crashed or unreachable one gets its clear, fast 502.
            went_to_sleep = fresh.status in (STOPPED, STOPPING) or (
                fresh.generation != current.generation and fresh.status != FAILED)
            if not (retry and replayable and went_to_sleep):
                await self._unreachable(scope, receive, send)
                return
            retry = False
            current = fresh

    async def _forward(self, scope: Scope, receive: Receive, send: Send,
                       current: ContainerState, identity: Identity) -> bool | None:
        """Forward to ``current``'s container. None when done; otherwise it could
        not be reached, nothing was sent to the client, and the result says whether
        the request could be sent again (none of its body was read)."""
        from edge.proxy import Upstream, UpstreamUnavailable, forward_websocket

        assert current.endpoint is not None
        host, _, port = current.endpoint.rpartition(":")
        upstream = Upstream(host, int(port), password=current.credential or "")
        try:
            if current.cert_pem:
                forwarder, context = await self._pinned_link(current)
                tls: ssl.SSLContext | None = context
            else:
                forwarder, tls = self.forwarder, None
            if scope["type"] == "websocket":
                await forward_websocket(scope, receive, send, upstream,
                                        self.settings.trust_forwarded,
                                        scheme="wss" if tls else "ws", ssl=tls,
                                        on_message=lambda: self.renew(current))
            else:
                await forwarder.forward(scope, receive, send, upstream,
                                        self._cookie_for(scope, identity),
                                        scheme="https" if tls else "http")
        except UpstreamUnavailable as exc:
            log.warning("container at generation %d unreachable: %s", current.generation, exc)
            self._state = None
            await self.waker.container_gone(current)
            return exc.replayable
        return None

    def renew(self, current: ContainerState) -> None:
        """Activity: bump the idle deadline (in the background, at most once per 5%)."""
        if self.deadline.due(current.generation, current.deadline, time.time()) is None:
            return
        task = asyncio.ensure_future(self.deadline.renew(current.generation, current.deadline))
        self._tasks.add(task)
        task.add_done_callback(self._renewed)

    def _renewed(self, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not renew the idle deadline: %s", task.exception())

    async def _not_ready(self, scope: Scope, receive: Receive, send: Send,
                         current: ContainerState, identity: Identity) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})
            return
        failed = current.status == FAILED and current.reason is not None
        headers = {"Retry-After": "5", "Cache-Control": "no-store"}
        if is_navigation(scope):
            response: Response = HTMLResponse(
                waking_page(current.status, current.generation, current.reason, failed),
                status_code=503, headers=headers)
            response.raw_headers.extend(self._cookie_for(scope, identity))
        elif failed:
            response = JSONResponse(
                {"error": "start_failed", "status": current.status,
                 "message": f"The workspace could not start: {current.reason}. "
                            "Retry to try again."}, status_code=503, headers=headers)
        else:
            response = JSONResponse(
                {"error": "waking" if current.status != "stopped" else "asleep",
                 "status": current.status,
                 "message": f"The workspace is {current.status}; retry after the "
                            "Retry-After seconds."}, status_code=503, headers=headers)
        await response(scope, receive, send)

    async def _unreachable(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})
            return
        await responses.error(
            scope, 502, "upstream_unavailable",
            "The opencode container did not answer. It will be started again on your "
            "next request.", title="Workspace unavailable",
            headers={"Retry-After": "2", "Cache-Control": "no-store"})(scope, receive, send)


def print_credentials(user: str, password: str) -> None:
    # Printed once, to the terminal of whoever started the edge; never logged.
    sys.stderr.write(
        "\n  opencode-edge created the admin login (shown only this once):\n"
        f"    user:     {user}\n    password: {password}\n\n")
    sys.stderr.flush()


_app: Edge | None = None


def create_app(settings: Settings | None = None) -> Edge:
    return Edge(settings or Settings.from_env())


def __getattr__(name: str) -> Any:
    # ``edge.app:app`` is built from the environment when the server first asks.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
