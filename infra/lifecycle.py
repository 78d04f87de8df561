"""The container lifecycle as conditional writes on the state item.

stopped → starting → running → stopping → stopped (or failed, with a reason).
Every transition names the generation it expects; a writer that lost the race
gets ``None`` back and re-reads. Generations only ever grow.
"""

from __future__ import annotations

import dataclasses
import time

from infra.interfaces import (
    ASLEEP,
    FAILED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    ContainerState,
    StateStore,
)


class Lifecycle:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def _write(self, current: ContainerState, expect: tuple[str, ...] | None,
                     **changes: object) -> ContainerState | None:
        new = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        if new.generation < current.generation:
            raise ValueError("a generation can never move backwards")
        ok = await self.store.put_if(current.generation, new, expect)
        return new if ok else None

    async def begin_start(self, owner: str) -> ContainerState | None:
        """Take the start lease if the container is asleep; None if someone else has it."""
        current = await self.store.get()
        if current.status not in ASLEEP:
            return None
        return await self.take_lease(current, owner)

    async def take_lease(self, current: ContainerState, owner: str) -> ContainerState | None:
        """Move ``current`` (asleep, or a start that went stale) to starting under a new generation."""
        now = time.time()
        return await self._write(
            current, (current.status,), status=STARTING, generation=current.generation + 1,
            since=now, lease_owner=owner, reason=None, endpoint=None, credential=None,
            cert_pem=None, busy=False)

    async def register_running(self, endpoint: str, credential: str, cert_pem: str | None,
                               idle_timeout: float, owner: str) -> ContainerState:
        """The container announces itself under a new generation (retrying lost races)."""
        for _ in range(50):
            current = await self.store.get()
            now = time.time()
            new = await self._write(
                current, None, status=RUNNING, generation=current.generation + 1, since=now,
                endpoint=endpoint, credential=credential, cert_pem=cert_pem,
                deadline=now + idle_timeout, last_activity=now, lease_owner=owner,
                reason=None, busy=False)
            if new is not None:
                return new
        raise RuntimeError("could not register the container: the state item keeps changing")

    async def update(self, generation: int, expected_status: tuple[str, ...] | None = None,
                     **changes: object) -> ContainerState | None:
        """Change fields of our own generation's item (in one of ``expected_status``,
        when given); None once a newer generation owns it or the status differs."""
        current = await self.store.get()
        if current.generation != generation:
            return None
        if expected_status is not None and current.status not in expected_status:
            return None
        return await self._write(current, expected_status, **changes)

    async def mark_stopping(self, generation: int) -> ContainerState | None:
        return await self.update(generation, status=STOPPING, since=time.time())

    async def mark_stopped(self, generation: int, reason: str | None = None) -> ContainerState | None:
        return await self.update(
            generation, status=FAILED if reason else STOPPED, since=time.time(),
            reason=reason, endpoint=None, credential=None, cert_pem=None, busy=False,
            lease_owner=None)

    async def mark_failed_if(self, current: ContainerState, reason: str) -> ContainerState | None:
        """Record that ``current``'s container died without saying so (crash, kill)."""
        return await self._write(
            current, (current.status,), status=FAILED, since=time.time(), reason=reason,
            endpoint=None, credential=None, cert_pem=None, busy=False, lease_owner=None)


__all__ = ["ASLEEP", "FAILED", "RUNNING", "STARTING", "STOPPED", "STOPPING", "Lifecycle"]


class Deadline:
    """The idle deadline, renewed with Coder's activity bump.

    ``deadline = max(deadline, now + idle_timeout)``, never backwards (the store
    makes that atomic), and written by each writer only when it would move the
    deadline by at least 5% of the timeout — so an active hour costs a bounded
    number of small writes, not one per request or event.
    """

    BUMP_FRACTION = 0.05

    def __init__(self, store: StateStore, idle_timeout: float, writer: str) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.writer = writer
        self._written: tuple[int, float] = (-1, 0.0)

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
        """Bump the deadline of the running container ``generation`` if due."""
        now = time.time() if now is None else now
        target = self.due(generation, known, now)
        if target is None:
            return False
        # Remember the attempt even if the store refused it (someone else wrote a
        # later deadline, or the container is no longer running): no retry storm.
        self._written = (generation, target)
        return await self.store.extend_deadline(generation, target, now, self.writer)
