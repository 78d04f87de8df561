"""Bring the container up on demand: exactly one start, everyone else waits.

Within one edge process all waiters share a single poll of the state item;
across processes (several edges, Lambda instances) the start lease is a
conditional write in the state store, so only its winner calls ``compute.start``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from infra.interfaces import ASLEEP, RUNNING, STARTING, Compute, ContainerState, StateStore
from infra.lifecycle import Lifecycle

log = logging.getLogger("ocedge.edge")

_POLL = 0.05


class Waker:
    def __init__(self, state: StateStore, compute: Compute, start_timeout: float) -> None:
        self.state = state
        self.compute = compute
        self.lifecycle = Lifecycle(state)
        # A start that has not registered within this long is presumed dead.
        self.start_timeout = start_timeout
        self.owner = f"edge:{socket.gethostname()}:{os.getpid()}"
        self._waiting: asyncio.Task[ContainerState] | None = None

    async def ensure_running(self, wait: float) -> ContainerState:
        """Start the container if needed and wait up to ``wait`` seconds for it.

        Returns the latest state either way; the caller checks ``status``.
        """
        if self._waiting is None or self._waiting.done():
            self._waiting = asyncio.ensure_future(self._bring_up())
        try:
            return await asyncio.wait_for(asyncio.shield(self._waiting), wait)
        except TimeoutError:
            return await self.state.get()

    async def _bring_up(self) -> ContainerState:
        lease_generation: int | None = None
        while True:
            current = await self.state.get()
            if current.status == RUNNING:
                return current
            if current.status in ASLEEP:
                if lease_generation is not None and current.generation >= lease_generation:
                    # The start we asked for ended without running: report it,
                    # the next request will try again.
                    return current
                lease = await self.lifecycle.take_lease(current, self.owner)
                if lease is not None:
                    log.info("waking the container (generation %d)", lease.generation)
                    lease_generation = lease.generation
                    try:
                        await self.compute.start()
                    except Exception as exc:
                        log.error("could not start the container: %s", exc)
                        failed = await self.lifecycle.mark_failed_if(
                            lease, f"could not start: {exc}")
                        return failed or await self.state.get()
                continue
            if current.status == STARTING and time.time() - current.since > self.start_timeout:
                info = await self.compute.describe()
                if not info.running:
                    log.warning("start of generation %d went stale", current.generation)
                    failed = await self.lifecycle.mark_failed_if(current, "start timed out")
                    if failed is not None and lease_generation is not None:
                        return failed
                    continue
            await asyncio.sleep(_POLL)

    def cancel(self) -> None:
        """Stop waiting (shutdown); a start already asked for goes on without us."""
        if self._waiting is not None and not self._waiting.done():
            self._waiting.cancel()

    async def container_gone(self, seen: ContainerState) -> None:
        """The container at ``seen`` stopped answering: if its process is gone,
        record that so the next request starts a new one."""
        info = await self.compute.describe()
        if not info.running:
            reason = "the container exited"
            if info.exit_code not in (None, 0):
                reason = f"the container exited with status {info.exit_code}"
            if await self.lifecycle.mark_failed_if(seen, reason) is not None:
                log.warning("generation %d is gone: %s", seen.generation, reason)

