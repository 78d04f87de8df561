"""The safety net: stop a container that missed its own deadline.

A healthy container puts itself to sleep when its idle deadline passes. One that
hangs would run (and cost) forever, so the reaper — run by ``ocedge reap`` and, on
AWS, by a scheduled function — stops any container whose deadline passed more than
a grace period ago, and clears a start (or stop) that never finished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from infra.interfaces import Status
from infra.lifecycle import Lifecycle

log = logging.getLogger("ocedge.reaper")

DEFAULT_GRACE = 300.0


@dataclass(frozen=True)
class ReapResult:
    reaped: bool
    status: Status
    detail: str


async def reap(lifecycle: Lifecycle, grace: float = DEFAULT_GRACE,
               now: float | None = None) -> ReapResult:
    """Stop the container if it is overdue: running ``grace`` seconds past its
    deadline while not busy, or starting/stopping for longer than a start may take
    (the lifecycle's ``start_limit``: its own start plus its host's transitions).

    A container on a host the lifecycle cannot see (an instance the stack replaced)
    is given one more ``start_limit`` and then only recorded failed: stopping it
    from here would stop this deployment's other host instead."""
    now = time.time() if now is None else now
    current = await lifecycle.state.get()
    extra = 0.0 if lifecycle.sees(current) else lifecycle.start_limit
    overdue = (
        (current.status == Status.RUNNING and current.deadline is not None
         and now > current.deadline + grace + extra and not current.busy)
        or (current.status in (Status.STARTING, Status.STOPPING)
            and now > current.since + lifecycle.start_limit + extra)
    )
    if not overdue:
        return ReapResult(False, current.status, "nothing to reap")
    log.warning("reaping generation %d (%s since %.0f)", current.generation, current.status,
                current.since)
    reason = (f"reaped: still {current.status} {now - current.since:.0f} s after its "
              f"deadline" if current.status == Status.RUNNING else
              f"reaped: stuck {current.status} for {now - current.since:.0f} s")
    await lifecycle.abort(current, reason)
    return ReapResult(True, current.status, reason)
