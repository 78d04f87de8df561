"""The keep-alive watcher: opencode's own events keep the container awake.

It follows ``/global/event`` over the internal connection. ``session.updated``
renews the idle deadline; a session whose ``session.status`` is busy (a long
tool call emits part updates, not ``session.updated``) keeps it awake for as long
as it is busy; ``server.heartbeat`` means nothing. When the stream drops, the
watcher reconnects with exponential backoff and jitter, and re-reads
``GET /session/status`` so a session that turned busy or idle meanwhile counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from container.notices import Notices
from infra.deadline import Deadline
from infra.interfaces import Status
from infra.lifecycle import Lifecycle

log = logging.getLogger("ocedge.watcher")

_BUSY_STATES = ("busy", "retry")
# Why wait_until_idle returned: the idle deadline passed (the container goes to sleep
# and exits "asleep", which powers the host off), or a newer generation owns the state
# item (the container steps aside and exits so its host can serve that one).
IDLE = "idle"
SUPERSEDED = "superseded"


def _status_type(status: Any) -> str:
    if isinstance(status, dict):
        return str(status.get("type", ""))
    return str(status or "")


class KeepAlive:
    """Keeps the container of ``generation`` awake while opencode is active: ``follow``
    its events, and ``wait_until_idle`` returns once it is not."""

    def __init__(self, base_url: str, auth: httpx.Auth, lifecycle: Lifecycle, generation: int,
                 deadline: Deadline, max_backoff: float = 30.0,
                 clock: Callable[[], float] = time.time, notices: Notices | None = None) -> None:
        self.notices = notices  # sees every event; its parked sessions do not count as busy
        self.base_url = base_url
        self.auth = auth
        self.lifecycle = lifecycle
        self.generation = generation
        self.deadline = deadline
        self.max_backoff = max_backoff
        self.clock = clock
        self.busy: set[str] = set()
        self.connects = 0
        self._known_deadline: float | None = None
        self._busy_written: bool | None = None

    # -- activity ----------------------------------------------------------------

    async def renew(self, why: str) -> None:
        if await self.deadline.renew(self.generation, self._known_deadline, self.clock()):
            log.debug("deadline renewed (%s)", why)

    def activity(self) -> None:
        """Activity that reaches opencode without passing the edge (on AWS the
        terminal's keystrokes, which CloudFront sends straight to the container): renew
        in the background, at most once per 5% of the idle timeout."""
        self.deadline.renew_soon(self.generation, self._known_deadline, self.clock())

    def _set_busy(self, session_id: str, status: str) -> None:
        if status in _BUSY_STATES:
            self.busy.add(session_id)
        else:
            self.busy.discard(session_id)

    async def handle(self, data: dict[str, Any]) -> None:
        """One event from /global/event."""
        if self.notices is not None:
            await self.notices.event(data)
        payload = data.get("payload") if isinstance(data.get("payload"), dict) else data
        assert isinstance(payload, dict)
        kind = payload.get("type")
        properties = payload.get("properties") or {}
        if kind == "session.updated":
            await self.renew("session.updated")
        elif kind == "session.status":
            session_id = str(properties.get("sessionID", ""))
            status = _status_type(properties.get("status"))
            self._set_busy(session_id, status)
            if status in _BUSY_STATES:
                await self.renew("session busy")
            await self._publish_busy()
        elif kind == "session.idle":
            self.busy.discard(str(properties.get("sessionID", "")))
            await self._publish_busy()
        # server.heartbeat, server.connected and the rest are not activity.

    async def _publish_busy(self) -> None:
        busy = bool(self.busy)
        if busy == self._busy_written:
            return
        if await self.lifecycle.update(self.generation, (Status.RUNNING,), busy=busy):
            self._busy_written = busy

    # -- the event stream ----------------------------------------------------------

    async def _sync_status(self, client: httpx.AsyncClient) -> None:
        response = await client.get(f"{self.base_url}/session/status", timeout=5)
        response.raise_for_status()
        statuses = response.json()
        self.busy = {sid for sid, status in statuses.items()
                     if _status_type(status) in _BUSY_STATES}
        if self.busy:
            await self.renew("session busy")
        await self._publish_busy()

    async def follow(self) -> None:
        """Follow the event stream forever, reconnecting after every drop."""
        attempt = 0
        async with httpx.AsyncClient(auth=self.auth, trust_env=False,
                                     timeout=httpx.Timeout(10, read=None)) as client:
            while True:
                try:
                    async with aconnect_sse(client, "GET", f"{self.base_url}/global/event") as source:
                        source.response.raise_for_status()
                        self.connects += 1
                        if self.connects > 1:
                            log.info("event stream reconnected (connection %d)", self.connects)
                        attempt = 0
                        await self._sync_status(client)
                        async for event in source.aiter_sse():
                            if not event.data:
                                continue
                            try:
                                data = json.loads(event.data)
                            except ValueError:
                                log.warning("ignored an event that is not JSON")
                                continue
                            if isinstance(data, dict):
                                await self.handle(data)
                    log.warning("event stream ended; reconnecting")
                except (httpx.HTTPError, OSError) as exc:
                    log.warning("event stream dropped (%s); reconnecting", type(exc).__name__)
                attempt += 1
                delay = min(self.max_backoff, 0.25 * 2 ** min(attempt, 10))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311

    # -- idleness ----------------------------------------------------------------

    async def wait_until_idle(self, check_every: float) -> str:
        """Return :data:`IDLE` once the deadline has passed and no session is busy, or
        :data:`SUPERSEDED` once a newer generation owns the state item."""
        while True:
            current = await self.lifecycle.state.get()
            if current.generation != self.generation:
                log.warning("a newer generation (%d) owns the state; stopping",
                            current.generation)
                return SUPERSEDED
            self._known_deadline = current.deadline
            now = self.clock()
            if self.busy - (self.notices.parked() if self.notices else set()):
                await self.renew("session busy")
            elif current.deadline is not None and now >= current.deadline:
                log.info("idle past the deadline and no session busy: going to sleep")
                return IDLE
            await asyncio.sleep(check_every)
