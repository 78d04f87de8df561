"""The safety net: stop a container that missed its own deadline.

A healthy container puts itself to sleep when its idle deadline passes. One that
hangs would run (and cost) forever, so the reaper — run by ``ocedge reap`` and, on
AWS, by a scheduled function — stops any container whose deadline passed more than
a grace period ago, and clears a start that never came up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from infra.interfaces import RUNNING, STARTING, STOPPING, Compute, StateStore
from infra.lifecycle import Lifecycle

log = logging.getLogger("ocedge.reaper")

DEFAULT_GRACE = 300.0


@dataclass(frozen=True)
class ReapResult:
    reaped: bool
    status: str
    detail: str


async def reap(state: StateStore, compute: Compute, grace: float = DEFAULT_GRACE,
               start_timeout: float = 600.0, now: float | None = None) -> ReapResult:
    now = time.time() if now is None else now
    current = await state.get()
    overdue = (
        (current.status == RUNNING and current.deadline is not None
         and now > current.deadline + grace and not current.busy)
        or (current.status in (STARTING, STOPPING) and now > current.since + start_timeout)
    )
    if not overdue:
        return ReapResult(False, current.status, "nothing to reap")
    log.warning("reaping generation %d (%s since %.0f)", current.generation, current.status,
                current.since)
    await compute.stop()
    reason = (f"reaped: still {current.status} {now - current.since:.0f} s after its "
              f"deadline" if current.status == RUNNING else
              f"reaped: stuck {current.status} for {now - current.since:.0f} s")
    await Lifecycle(state).mark_failed_if(current, reason)
    return ReapResult(True, current.status, reason)
