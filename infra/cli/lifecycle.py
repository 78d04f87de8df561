"""``ocedge status|wake|sleep|reap``: the container's state, and waking it, putting it
to sleep or reaping it through :class:`infra.lifecycle.Lifecycle`, the one lifecycle
the edge, the watcher and the reaper use too."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from infra import progress as steps
from infra.cli.console import CliError, emit, progress, when
from infra.cli.options import settings_from_args
from infra.interfaces import ASLEEP, ContainerState, StateStore, Status

# How often the progress lines look at the state item.
_POLL = 0.2


def _show(args: argparse.Namespace, current: ContainerState) -> None:
    now = time.time()
    data = {"status": current.status, "generation": current.generation,
            "since": current.since, "deadline": current.deadline, "busy": current.busy,
            "reason": current.reason,
            "steps": [step.as_dict() for step in steps.report(current, now)]}
    text = f"{current.status} since {when(current.since)} (generation {current.generation})"
    if current.deadline and current.status == Status.RUNNING:
        text += f"\nsleeps after {when(current.deadline)} unless used"
    if current.reason:
        text += f"\nreason: {current.reason}"
    shown = steps.lines(current, now)
    if shown and current.status != Status.RUNNING:  # running: how it started is history
        text += "\nsteps of the start:\n" + "\n".join(f"  {line}" for line in shown)
    emit(args, data, text)


class _Progress:
    """Each change of status, and each step of a start as it begins (with how long
    the one before took), on stderr, with the seconds since the command began."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last: Status | None = None
        self.steps: tuple[tuple[str, float], ...] = ()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def show(self, current: ContainerState) -> None:
        if current.status != self.last:
            progress(f"  {self.elapsed:5.1f} s  {current.status}")
            self.last = current.status
        if current.status in (Status.STARTING, Status.FAILED) and current.steps != self.steps:
            seen = {at for _, at in self.steps}
            for report in steps.report(current, time.time()):
                if report.state == steps.FAILED:
                    progress(f"  {self.elapsed:5.1f} s    · {report.name} — FAILED after "
                             f"{report.seconds:.1f} s: {current.reason}")
                elif report.at not in seen:
                    progress(f"  {self.elapsed:5.1f} s    · {report.name}")
            self.steps = current.steps


async def status(args: argparse.Namespace) -> None:
    from infra.backends import backends_for_tools

    backends = backends_for_tools(settings_from_args(args))
    _show(args, await backends.state.get())


async def wake(args: argparse.Namespace) -> None:
    """Start the container unless it runs, and wait for it, showing progress."""
    from infra.backends import backends_for_tools
    from infra.lifecycle import Lifecycle, process_owner

    settings = settings_from_args(args)
    backends = backends_for_tools(settings)
    before = await backends.state.get()
    if before.status != Status.RUNNING:
        # The start timeout the edge uses: a start that has not registered by then
        # is stale, and this wake recovers it.
        lifecycle = Lifecycle(backends.state, backends.compute, owner=process_owner("cli"),
                              start_timeout=settings.start_timeout)
        progress("Waking the workspace…" if before.status in ASLEEP else
                 f"The workspace is {before.status}; waiting for it…")
        shown = _Progress()
        # By default as long as a start may take on this host (on EC2: minutes).
        timeout = lifecycle.start_limit if args.timeout is None else args.timeout
        waking = asyncio.ensure_future(lifecycle.wake(timeout))
        while not waking.done():
            shown.show(await backends.state.get())
            await asyncio.wait({waking}, timeout=_POLL)
        current = waking.result()
        shown.show(current)
        if current.status != Status.RUNNING:
            if current.status in ASLEEP and current.generation > before.generation:
                # The start this wake asked for (or joined) ended without running.
                raise CliError(f"the container failed: {current.reason}"
                               if current.status == Status.FAILED else
                               "the container stopped before it was running")
            raise CliError(f"still {current.status} after {timeout:g} s")
    _show(args, await backends.state.get())


async def _wait_until_asleep(state: StateStore, timeout: float) -> ContainerState:
    shown = _Progress()
    while True:
        current = await state.get()
        shown.show(current)
        if current.status in ASLEEP:
            return current
        if shown.elapsed > timeout:
            raise CliError(f"still {current.status} after {timeout:g} s")
        await asyncio.sleep(_POLL)


async def sleep(args: argparse.Namespace) -> None:
    """Ask the container to stop (it saves its workspace first) and wait until it has."""
    from infra.backends import backends_for_tools
    from infra.lifecycle import Lifecycle, process_owner

    backends = backends_for_tools(settings_from_args(args))
    if (await backends.state.get()).status not in ASLEEP:
        progress("Putting the workspace to sleep…")
        await Lifecycle(backends.state, backends.compute,
                        owner=process_owner("cli")).request_sleep()
        await _wait_until_asleep(backends.state, args.timeout)
    _show(args, await backends.state.get())


async def reap_overdue(args: argparse.Namespace) -> None:
    """Stop a container that hung past its idle deadline (the reaper, run once)."""
    from infra.backends import backends_for_tools
    from infra.lifecycle import Lifecycle, process_owner
    from infra.reaper import reap

    backends = backends_for_tools(settings_from_args(args))
    # The lifecycle's default start timeout: a start or stop stuck that long is reaped.
    lifecycle = Lifecycle(backends.state, backends.compute, owner=process_owner("cli"))
    result = await reap(lifecycle, grace=args.grace)
    emit(args, {"reaped": result.reaped, "status": result.status, "detail": result.detail},
         result.detail)


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``status``, ``wake``, ``sleep`` and ``reap`` to ``ocedge``'s subcommands."""
    p = subparsers.add_parser("status", parents=[common], help="the container's state")
    p.set_defaults(run=status)
    p = subparsers.add_parser("wake", parents=[common], help="start the workspace and wait for it")
    p.add_argument("--timeout", type=float,
                   help="seconds to wait (default: as long as a start may take: the "
                        "container's own start, 90 s, plus on EC2 the instance's stop, "
                        "start and boot, 510 s in all)")
    p.set_defaults(run=wake)
    p = subparsers.add_parser("sleep", parents=[common], help="stop the workspace gracefully")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    p.set_defaults(run=sleep)
    p = subparsers.add_parser("reap", parents=[common],
                              help="stop a container that hung past its idle deadline")
    p.add_argument("--grace", type=float, default=300,
                   help="seconds past the deadline before reaping (default 300)")
    p.set_defaults(run=reap_overdue)
