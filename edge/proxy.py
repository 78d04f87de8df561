"""The proxy layer: find the container (waking it for activity), forward to it,
and keep its idle deadline moving while it is used.

An open tab's background traffic never wakes a sleeping container; it gets a 503
(a navigation gets the waking page) until the container runs. A request that
finds the container gone since the cached state was read is woken and sent once
more if none of its body was read; otherwise it gets a clear 502.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.responses import JSONResponse, Response

from edge import pages
from edge.forwarding import BadRequest, UpstreamUnavailable, request_target
from edge.links import UpstreamLinks
from edge.request import ACTIVITY, BACKGROUND, intent, is_navigation
from edge.types import Receive, Scope, Send
from edge.websocket import forward_websocket
from infra.deadline import Deadline
from infra.interfaces import ContainerState, StateStore, Status
from infra.lifecycle import Lifecycle
from infra.settings import Settings

log = logging.getLogger("ocedge.edge")

# A running state is re-read at most this often on the request path.
STATE_TTL = 1.0


class Proxy:
    """The innermost layer: every authenticated request that is not the edge's own."""

    def __init__(self, settings: Settings, state: StateStore, lifecycle: Lifecycle,
                 links: UpstreamLinks, deadline: Deadline) -> None:
        self.settings = settings
        self.state = state
        self.lifecycle = lifecycle
        self.links = links
        self.deadline = deadline
        self._cached: tuple[float, ContainerState] | None = None
        self._refresh: asyncio.Future[ContainerState] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request_target(scope)
        except BadRequest as exc:
            # Refused before anything is woken or forwarded.
            await self._bad_request(scope, receive, send, str(exc))
            return
        kind = intent(scope)
        # An activity request that finds the container gone (it fell asleep since
        # the cached state was read) may take the wake path once more, if none of
        # its body was read yet.
        retry = kind == ACTIVITY and scope["type"] == "http"
        current = await self.current()
        while True:
            if current.status != Status.RUNNING or not current.endpoint:
                if kind == BACKGROUND:
                    # An open tab's polls must not wake a sleeping container.
                    await self._not_ready(scope, receive, send, current)
                    return
                current = await self.lifecycle.wake(self.settings.wake_wait)
                self._cached = None
                if current.status != Status.RUNNING or not current.endpoint:
                    await self._not_ready(scope, receive, send, current)
                    return
            elif kind == ACTIVITY:
                self.renew(current)
            replayable = await self._forward(scope, receive, send, current)
            if replayable is None:
                return
            fresh = await self.state.get()
            # Only a container that went to sleep (or was replaced) meanwhile is
            # woken again; a crashed or unreachable one gets its clear, fast 502.
            went_to_sleep = fresh.status in (Status.STOPPED, Status.STOPPING) or (
                fresh.generation != current.generation and fresh.status != Status.FAILED)
            if not (retry and replayable and went_to_sleep):
                await self._unreachable(scope, receive, send)
                return
            retry = False
            current = fresh

    async def current(self) -> ContainerState:
        """The state item; a running one is cached briefly and refreshed by one
        request at a time, however many are in flight."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < STATE_TTL:
            return self._cached[1]
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._read())
        return await asyncio.shield(self._refresh)

    async def _read(self) -> ContainerState:
        current = await self.state.get()
        running = current.status == Status.RUNNING
        self._cached = (time.monotonic(), current) if running else None
        return current

    async def _forward(self, scope: Scope, receive: Receive, send: Send,
                       current: ContainerState) -> bool | None:
        """Forward to ``current``'s container. None when done; otherwise it could
        not be reached, nothing was sent to the client, and the result says whether
        the request could be sent again (none of its body was read)."""
        if not current.cert_pem and (self.settings.backend == "aws" or self.settings.stack):
            # On AWS the edge trusts only the certificate the container registered: a
            # running state without one (written by anything but the container) is
            # refused, never dialled over plain HTTP. Locally, loopback stays plain.
            log.error("the running state of generation %d registered no certificate; "
                      "refusing to reach %s over plain HTTP", current.generation,
                      current.endpoint)
            await self._unverified(scope, receive, send)
            return None
        try:
            link = await self.links.to(current)
            if scope["type"] == "websocket":
                await forward_websocket(scope, receive, send, link.upstream,
                                        self.settings.trust_forwarded,
                                        scheme=link.websocket_scheme, tls=link.tls,
                                        on_message=lambda: self.renew(current))
            else:
                await link.forwarder.forward(scope, receive, send, link.upstream)
        except UpstreamUnavailable as exc:
            log.warning("container at generation %d unreachable: %s", current.generation, exc)
            self._cached = None
            await self.lifecycle.container_gone(current)
            return exc.replayable
        return None

    def renew(self, current: ContainerState) -> None:
        """Activity: bump the idle deadline (in the background, at most once per 5%)."""
        self.deadline.renew_soon(current.generation, current.deadline)

    async def _not_ready(self, scope: Scope, receive: Receive, send: Send,
                         current: ContainerState) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})
            return
        failed = current.status == Status.FAILED and current.reason is not None
        headers = {"Retry-After": "5", "Cache-Control": "no-store"}
        response: Response
        if is_navigation(scope):
            response = pages.waking_response(current, time.time())
        elif failed:
            response = JSONResponse(
                {"error": "start_failed", "status": current.status,
                 "message": f"The workspace could not start: {current.reason}. "
                            "Retry to try again."}, status_code=503, headers=headers)
        else:
            response = JSONResponse(
                {"error": "asleep" if current.status == Status.STOPPED else "waking",
                 "status": current.status,
                 "message": f"The workspace is {current.status}; retry after the "
                            "Retry-After seconds."}, status_code=503, headers=headers)
        await response(scope, receive, send)

    async def _bad_request(self, scope: Scope, receive: Receive, send: Send,
                           message: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await pages.error(scope, 400, "bad_request", message)(scope, receive, send)

    async def _unverified(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})
            return
        await pages.error(
            scope, 502, "container_unverified",
            "The container registered no TLS certificate, so the edge cannot verify it "
            "and will not reach it over plain HTTP. Put it to sleep (`ocedge sleep`) and "
            "use it again; if this persists, something other than the container wrote "
            "its state.", title="Workspace unverified",
            headers={"Cache-Control": "no-store"})(scope, receive, send)

    async def _unreachable(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})
            return
        await pages.error(
            scope, 502, "upstream_unavailable",
            "The opencode container did not answer. It will be started again on your "
            "next request.", title="Workspace unavailable",
            headers={"Retry-After": "2", "Cache-Control": "no-store"})(scope, receive, send)
