"""The container lifecycle, written once: the edge, the CLI, the watcher and the reaper call it.

stopped → starting → running → stopping → stopped (or failed, with a reason).
Every transition is a conditional write naming the generation it expects; a
writer that lost the race gets ``None`` back and re-reads. Generations only grow.

:meth:`Lifecycle.wake` brings the container up on demand with exactly one
``compute.start``: within one process all callers share a single attempt; across
processes (several edges, Lambda instances, ``ocedge wake``) the start lease is a
conditional write, so only its winner starts the host. The lease names the host it
was asked of; a container on a host with an identity (an EC2 instance) :meth:`claims
<Lifecycle.claim>` it before touching the workspace, so a host nobody asked never runs
a second container on the bucket. A start that fails is marked failed with its reason;
one that never registers goes stale once it has had its host's whole budget
(:class:`~infra.interfaces.HostBudget`: stop, start, boot) and its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time

from infra.interfaces import ASLEEP, Compute, ComputeInfo, ContainerState, HostBudget, StateStore, Status

log = logging.getLogger("ocedge.lifecycle")

# How often a waiter looks at the state item while a start goes on.
POLL = 0.05
# A start that has not registered within this long is presumed dead (seconds).
START_TIMEOUT = 600.0
# The container's exit status for "asleep (idle and saved, or nothing asked of this host):
# power the host off", the only one that does. Outside the ranges with meanings of their
# own: 0-7 (LSB), 126-255 (shell, signals, Docker), 200-243 (systemd.exec's own).
EXIT_ASLEEP = 10
# Steps of a wake, as the state item records them (see ContainerState.steps).
STEP_REQUESTED = "wake requested"
STEP_HOST_STOPPING = "waiting for the host to finish stopping"
STEP_HOST_STARTING = "host starting"
STEP_CONTAINER = "host up, container starting"


def process_owner(role: str) -> str:
    """The owner name of this process in role ``role`` (``edge``, ``container``,
    ``cli``, ``reaper``): what the state item's ``lease_owner`` and writer say."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


class Lifecycle:
    """Every transition of the deployment's container, as ``owner``.

    ``compute`` is needed only to wake the container or to tell whether it is gone;
    the container itself (which claims, registers and stops) passes none, and names
    the ``host`` it runs on instead (None: a host without identity, nothing to claim).
    """

    def __init__(self, state: StateStore, compute: Compute | None = None, *, owner: str,
                 start_timeout: float = START_TIMEOUT, poll: float = POLL,
                 host: str | None = None) -> None:
        self.state = state
        self._compute = compute
        self.owner = owner
        # The container's own start (mount, restore, opencode), once its host is up.
        self.start_timeout = start_timeout
        self.poll = poll
        self.host = host if host is not None else (compute.host if compute else None)
        self.budget = compute.budget if compute is not None else HostBudget()
        self._waking: asyncio.Task[ContainerState] | None = None
        self._looked: tuple[float, ComputeInfo] | None = None
        self._seen_stopped: dict[int, float] = {}

    @property
    def compute(self) -> Compute:
        if self._compute is None:
            raise RuntimeError("this Lifecycle was made without a compute backend")
        return self._compute

    @property
    def start_limit(self) -> float:
        """The longest a start may take, from the lease to a registered container."""
        return self.start_timeout + self.budget.total

    def sees(self, item: ContainerState) -> bool:
        """Whether ``item``'s container runs on this lifecycle's host (or one without
        identity): one on another host (an instance the stack replaced) cannot be
        described, stopped or declared gone from here."""
        return item.host is None or self.host is None or item.host == self.host

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
                        await self._start_host(compute, lease)
                    except Exception as exc:
                        log.error("could not start the container: %s", exc)
                        failed = await self.mark_failed_if(await self.state.get(),
                                                           f"could not start: {exc}",
                                                           generation=lease.generation)
                        return failed or await self.state.get()
                continue  # won or lost the lease: look again
            if current.status == Status.STARTING:
                failed = await self._give_up_if_stale(compute, current)
                if failed is not None:
                    if lease_generation is not None:
                        return failed
                    continue
            await asyncio.sleep(self.poll)

    async def _start_host(self, compute: Compute, lease: ContainerState) -> None:
        """Start the host for ``lease``, recording the steps of a host that has them."""
        phased = self.budget.total > 0
        if phased and (await compute.describe()).phase == "stopping":
            # Asleep a moment ago: the host is still going down and must stop first.
            await self.record_step(lease.generation, STEP_HOST_STOPPING)
        await compute.start()
        if phased:
            await self.record_step(lease.generation, STEP_HOST_STARTING)

    async def _look(self, compute: Compute) -> ComputeInfo:
        """The host as it is now, asked at most once per ``budget.describe_every``."""
        now = time.monotonic()
        if self._looked is None or now - self._looked[0] >= self.budget.describe_every:
            self._looked = (now, await compute.describe())
        return self._looked[1]

    async def _give_up_if_stale(self, compute: Compute,
                                current: ContainerState) -> ContainerState | None:
        """Mark the start ``current`` failed if it had its whole budget for the phase
        its host is in; the failed state, or None while it may still come up."""
        now = time.time()
        elapsed = now - current.since
        if elapsed <= self.start_timeout:
            return None  # the quickest a start can go stale: no host lookups before
        if not self.sees(current):
            # Asked of a host this lifecycle cannot look at: give it twice the budget.
            if elapsed <= 2 * self.start_limit:
                return None
            reason = f"start timed out: the start asked of {current.host} never came up"
        else:
            phase = (await self._look(compute)).phase
            if phase == "stopped":
                # Down, with a start leased: the lease holder's start may be on its way.
                first = self._seen_stopped.setdefault(current.generation, now)
                if now - first < self.budget.handoff:
                    return None
                reason = "start timed out"
            elif elapsed <= self.start_limit:
                return None
            else:
                reason = "start timed out: " + {
                    "stopping": f"the host was still stopping after {elapsed:.0f} s",
                    "pending": f"the host was still starting after {elapsed:.0f} s",
                }.get(phase, f"the container did not come up within {elapsed:.0f} s of the wake")
        failed = await self.mark_failed_if(current, reason)
        if failed is not None:
            log.warning("start of generation %d went stale: %s", current.generation, reason)
        return failed

    def cancel(self) -> None:
        """Stop waiting (shutdown); a start already asked for goes on without us."""
        if self._waking is not None and not self._waking.done():
            self._waking.cancel()

    async def container_gone(self, seen: ContainerState) -> ContainerState | None:
        """The container at ``seen`` stopped answering: if its host is not running,
        record that (failed, with how it ended) so the next wake starts a new one.
        Returns the failed state, or None if it runs, someone else moved on, or it
        runs on a host this lifecycle cannot look at."""
        if not self.sees(seen):
            log.warning("generation %d on %s does not answer; that host is not ours to "
                        "look at, so it is left to go to sleep by itself",
                        seen.generation, seen.host)
            return None
        info = await self.compute.describe()
        if info.running:
            return None
        reason = "the container exited"
        if info.exit_code not in (None, 0, EXIT_ASLEEP):
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
        up) and record it failed with ``reason``; None if the item moved on meanwhile.
        A container on a host this lifecycle cannot see is only recorded failed."""
        if self.sees(current):
            await self.compute.stop()
        return await self.mark_failed_if(current, reason)

    # -- the container's side ----------------------------------------------------------

    async def claim(self) -> ContainerState | None:
        """Take over the start asked of this host before touching the workspace: a new
        generation, so every write of an older one (a container elsewhere) fails from
        now on. None if nothing was asked: the item does not name this host, or it is
        cleanly asleep. (Failed, running or stopping on this host is its previous
        container, which died: the host runs one at a time.)"""
        current = await self.state.get()
        if self.host is None or current.host != self.host or current.status == Status.STOPPED:
            return None
        now = time.time()
        return await self._write(
            current, (current.status,), status=Status.STARTING,
            generation=current.generation + 1, lease_owner=self.owner, reason=None,
            since=current.since if current.status == Status.STARTING else now,
            endpoint=None, credential=None, cert_pem=None, busy=False,
            steps=(*current.steps, (STEP_CONTAINER, now)))

    async def register_claimed(self, claim: ContainerState, endpoint: str, credential: str,
                               cert_pem: str | None,
                               idle_timeout: float) -> ContainerState | None:
        """Register as running under the generation after ``claim`` — only if the
        claim still holds (None: someone moved the item on; this container must not serve)."""
        now = time.time()
        return await self._write(
            claim, (Status.STARTING,), status=Status.RUNNING, generation=claim.generation + 1,
            since=now, endpoint=endpoint, credential=credential, cert_pem=cert_pem,
            deadline=now + idle_timeout, last_activity=now, lease_owner=self.owner,
            reason=None, busy=False)

    # -- transitions -------------------------------------------------------------------

    async def _write(self, current: ContainerState, expect: tuple[Status, ...] | None,
                     **changes: object) -> ContainerState | None:
        new = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        if new.generation < current.generation:
            raise ValueError("a generation can never move backwards")
        ok = await self.state.put_if(current.generation, new, expect)
        return new if ok else None

    async def record_step(self, generation: int, step: str) -> ContainerState | None:
        """Add ``step`` (now) to the steps of the start of ``generation``; None once that
        start is over or moved on (a step is a note: a lost race is not retried)."""
        current = await self.state.get()
        if current.generation != generation or current.status != Status.STARTING:
            return None
        return await self._write(current, (Status.STARTING,),
                                 steps=(*current.steps, (step, time.time())))

    async def begin_start(self) -> ContainerState | None:
        """Take the start lease if the container is asleep; None if it is not, or
        someone else took it first."""
        current = await self.state.get()
        if current.status not in ASLEEP:
            return None
        return await self.take_lease(current)

    async def take_lease(self, current: ContainerState) -> ContainerState | None:
        """Move ``current`` (asleep, or a start that went stale) to starting under a
        new generation, for this lifecycle's host; None if the item changed since
        ``current`` was read."""
        now = time.time()
        return await self._write(
            current, (current.status,), status=Status.STARTING,
            generation=current.generation + 1, since=now, lease_owner=self.owner,
            reason=None, endpoint=None, credential=None, cert_pem=None, busy=False,
            host=self.host, steps=((STEP_REQUESTED, now),))

    async def register_running(self, endpoint: str, credential: str, cert_pem: str | None,
                               idle_timeout: float) -> ContainerState:
        """The container (on a host without identity) announces itself under a new
        generation, retrying lost races."""
        for _ in range(50):
            current = await self.state.get()
            now = time.time()
            new = await self._write(
                current, None, status=Status.RUNNING, generation=current.generation + 1,
                since=now, endpoint=endpoint, credential=credential, cert_pem=cert_pem,
                deadline=now + idle_timeout, last_activity=now, lease_owner=self.owner,
                reason=None, busy=False, host=self.host or current.host)
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

    async def mark_failed_if(self, current: ContainerState, reason: str,
                             generation: int | None = None) -> ContainerState | None:
        """Record that ``current``'s container died without saying so (crash, kill,
        a start that failed or went stale); None if the item moved on meanwhile, or
        (with ``generation``) if ``current`` is not that generation's."""
        if generation is not None and current.generation != generation:
            return None
        return await self._write(
            current, (current.status,), status=Status.FAILED, since=time.time(),
            reason=reason, endpoint=None, credential=None, cert_pem=None, busy=False,
            lease_owner=None)
