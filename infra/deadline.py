"""The idle deadline of the running container, renewed by activity.

Coder's activity bump: ``deadline = max(deadline, now + idle_timeout)``, never
backwards (the store makes that atomic), and written by each writer only when it
would move the deadline by at least 5% of the timeout — so an active hour costs a
bounded number of small writes, not one per request or event.
"""

from __future__ import annotations

import asyncio
import logging
import time

from infra.interfaces import StateStore

log = logging.getLogger("ocedge.deadline")


class Deadline:
    """One writer's renewals of the idle deadline (the edge's, or the container's)."""

    BUMP_FRACTION = 0.05

    def __init__(self, store: StateStore, idle_timeout: float, writer: str) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.writer = writer
        self._written: tuple[int, float] = (-1, 0.0)
        self._renewals: set[asyncio.Task[bool]] = set()

    def due(self, generation: int, known: float | None, now: float) -> float | None:
        """The deadline to write now, or None if the 5% rule says not yet."""
        target = now + self.idle_timeout
        floor = known or 0.0
        if self._written[0] == generation:
            floor = max(floor, self._written[1])
        if target - floor < self.BUMP_FRACTION * self.idle_timeout:
            return None
        return target

    async def renew(self, generation: int, known: float | None,
                    now: float | None = None) -> bool:
        """Bump the deadline of the running container ``generation`` if due; True if
        this call moved it."""
        now = time.time() if now is None else now
        target = self.due(generation, known, now)
        if target is None:
            return False
        # Remember the attempt even if the store refused it (someone else wrote a
        # later deadline, or the container is no longer running): no retry storm.
        self._written = (generation, target)
        return await self.store.extend_deadline(generation, target, now, self.writer)

    def renew_soon(self, generation: int, known: float | None, now: float | None = None) -> None:
        """``renew`` in the background, for activity seen on a request path (a request
        the edge forwards, a keystroke in a terminal): nothing is started unless it is
        due, and a failed write is logged, never raised."""
        now = time.time() if now is None else now
        if self.due(generation, known, now) is None:
            return
        task = asyncio.ensure_future(self.renew(generation, known, now))
        self._renewals.add(task)
        task.add_done_callback(self._renewed)

    def _renewed(self, task: asyncio.Task[bool]) -> None:
        self._renewals.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not renew the idle deadline: %s", task.exception())
