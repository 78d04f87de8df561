"""The container lifecycle, written once: the edge, the CLI, the watcher and the reaper call it.

stopped → starting → running → stopping → stopped (or failed, with a reason).
Every transition is a conditional write naming the generation it expects; a
writer that lost the race gets ``None`` back and re-reads. Generations only grow.

:meth:`Lifecycle.wake` brings the container up on demand with exactly one
``compute.start``: within one process all callers share a single attempt; across
processes (several edges, Lambda instances, ``ocedge wake``) the start lease is a
conditional write, so only its winner starts the host. A start that fails is
marked failed with its reason; one that never registers goes stale and is
recovered by the next caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time

from infra.interfaces import ASLEEP, Compute, ContainerState, StateStore, Status

log = logging.getLogger("ocedge.lifecycle")

# How often a waiter looks at the state item while a start goes on.
POLL = 0.05
# A start that has not registered within this long is presumed dead (seconds).
START_TIMEOUT = 600.0


def process_owner(role: str) -> str:
    """The owner name of this process in role ``role`` (``edge``, ``container``,
    ``cli``, ``reaper``): what the state item's ``lease_owner`` and writer say."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


class Lifecycle:
    """Every transition of the deployment's container, as ``owner``.

    ``compute`` is needed only to wake the container or to tell whether it is gone;
    the container itself (which registers and stops) passes none.
    """

    def __init__(self, state: StateStore, compute: Compute | None = None, *, owner: str,
                 start_timeout: float = START_TIMEOUT, poll: float = POLL) -> None:
        self.state = state
        self._compute = compute
        self.owner = owner
        self.start_timeout = start_timeout
        self.poll = poll
        self._waking: asyncio.Task[ContainerState] | None = None

    @property
    def compute(self) -> Compute:
        if self._compute is None:
            raise RuntimeError("this Lifecycle was made without a compute backend")
        return self._compute

    # -- waking ------------------------------------------------------------------------

    async def wake(self, wait: float) -> ContainerState:
        """Start the container if it is asleep and wait up to ``wait`` seconds for it.

        Returns the latest state either way (the caller checks ``status``); a start
        already asked for goes on after ``wait``. Concurrent callers share one attempt.
        """
        compute = self.compute  # none: fail here, before taking a lease
        if self._waking is None or self._waking.done():
            self._waking = asyncio.ensure_future(self._bring_up(compute))
        try:
            return await asyncio.wait_for(asyncio.shield(self._waking), wait)
        except TimeoutError:
            return await self.state.get()

    async def _bring_up(self, compute: Compute) -> ContainerState:
        lease_generation: int | None = None
        while True:
            current = await self.state.get()
            if current.status == Status.RUNNING:
                return current
            if current.status in ASLEEP:
                if lease_generation is not None and current.generation >= lease_generation:
                    # The start we asked for ended without running: report it, the
                    # next caller will try again.
                    return current
                lease = await self.take_lease(current)
                if lease is not None:
                    log.info("waking the container (generation %d)", lease.generation)
                    lease_generation = lease.generation
                    try:
                        await compute.start()
                    except Exception as exc:
                        log.error("could not start the container: %s", exc)
                        failed = await self.mark_failed_if(lease, f"could not start: {exc}")
                        return failed or await self.state.get()
                continue  # won or lost the lease: look again
            if current.status == Status.STARTING and \
                    time.time() - current.since > self.start_timeout:
                info = await compute.describe()
                if not info.running:
                    log.warning("start of generation %d went stale", current.generation)
                    failed = await self.mark_failed_if(current, "start timed out")
                    if failed is not None and lease_generation is not None:
                        return failed
                    continue
            await asyncio.sleep(self.poll)

    def cancel(self) -> None:
        """Stop waiting (shutdown); a start already asked for goes on without us."""
        if self._waking is not None and not self._waking.done():
            self._waking.cancel()

    async def container_gone(self, seen: ContainerState) -> ContainerState | None:
        """The container at ``seen`` stopped answering: if its host is not running,
        record that (failed, with how it ended) so the next wake starts a new one.
        Returns the failed state, or None if it runs or someone else moved on."""
        info = await self.compute.describe()
        if info.running:
            return None
        reason = "the container exited"
        if info.exit_code not in (None, 0):
            reason = f"the container exited with status {info.exit_code}"
        failed = await self.mark_failed_if(seen, reason)
        if failed is not None:
            log.warning("generation %d is gone: %s", seen.generation, reason)
        return failed

    async def request_sleep(self) -> ContainerState:
        """Ask a container that is up to stop (it saves its workspace and records
        ``stopped`` itself); returns the state it was in. A no-op when asleep."""
        current = await self.state.get()
        if current.status not in ASLEEP:
            await self.compute.stop()
        return current

    async def abort(self, current: ContainerState, reason: str) -> ContainerState | None:
        """Stop ``current``'s container from outside (it hung, or its start never came
        up) and record it failed with ``reason``; None if the item moved on meanwhile."""
        await self.compute.stop()
        return await self.mark_failed_if(current, reason)

    # -- transitions -------------------------------------------------------------------

    async def _write(self, current: ContainerState, expect: tuple[Status, ...] | None,
                     **changes: object) -> ContainerState | None:
        new = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        if new.generation < current.generation:
            raise ValueError("a generation can never move backwards")
        ok = await self.state.put_if(current.generation, new, expect)
        return new if ok else None

    async def begin_start(self) -> ContainerState | None:
        """Take the start lease if the container is asleep; None if it is not, or
        someone else took it first."""
        current = await self.state.get()
        if current.status not in ASLEEP:
            return None
        return await self.take_lease(current)

    async def take_lease(self, current: ContainerState) -> ContainerState | None:
        """Move ``current`` (asleep, or a start that went stale) to starting under a
        new generation; None if the item changed since ``current`` was read."""
        return await self._write(
            current, (current.status,), status=Status.STARTING,
            generation=current.generation + 1, since=time.time(), lease_owner=self.owner,
            reason=None, endpoint=None, credential=None, cert_pem=None, busy=False)

    async def register_running(self, endpoint: str, credential: str, cert_pem: str | None,
                               idle_timeout: float) -> ContainerState:
        """The container announces itself under a new generation (retrying lost races)."""
        for _ in range(50):
            current = await self.state.get()
            now = time.time()
            new = await self._write(
                current, None, status=Status.RUNNING, generation=current.generation + 1,
                since=now, endpoint=endpoint, credential=credential, cert_pem=cert_pem,
                deadline=now + idle_timeout, last_activity=now, lease_owner=self.owner,
                reason=None, busy=False)
            if new is not None:
                return new
        raise RuntimeError("could not register the container: the state item keeps changing")

    async def update(self, generation: int, expected_status: tuple[Status, ...] | None = None,
                     **changes: object) -> ContainerState | None:
        """Change fields of our own generation's item (in one of ``expected_status``,
        when given); None once a newer generation owns it or the status differs."""
        current = await self.state.get()
        if current.generation != generation:
            return None
        if expected_status is not None and current.status not in expected_status:
            return None
        return await self._write(current, expected_status, **changes)

    async def mark_stopping(self, generation: int) -> ContainerState | None:
        return await self.update(generation, status=Status.STOPPING, since=time.time())

    async def mark_stopped(self, generation: int,
                           reason: str | None = None) -> ContainerState | None:
        """The container of ``generation`` has stopped: cleanly, or failed with ``reason``."""
        return await self.update(
            generation, status=Status.FAILED if reason else Status.STOPPED, since=time.time(),
            reason=reason, endpoint=None, credential=None, cert_pem=None, busy=False,
            lease_owner=None)

    async def mark_failed_if(self, current: ContainerState,
                             reason: str) -> ContainerState | None:
        """Record that ``current``'s container died without saying so (crash, kill,
        a start that failed or went stale); None if the item moved on meanwhile."""
        return await self._write(
            current, (current.status,), status=Status.FAILED, since=time.time(),
            reason=reason, endpoint=None, credential=None, cert_pem=None, busy=False,
            lease_owner=None)

