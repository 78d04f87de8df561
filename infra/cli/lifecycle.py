"""``ocedge status|wake|sleep|reap``: the container's state, and waking it, putting it
to sleep or reaping it through :class:`infra.lifecycle.Lifecycle`, the one lifecycle
the edge, the watcher and the reaper use too."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from infra.cli.console import CliError, emit, progress, when
from infra.cli.options import settings_from_args
from infra.interfaces import ASLEEP, ContainerState, StateStore, Status

# How often the progress lines look at the state item.
_POLL = 0.2


def _show(args: argparse.Namespace, current: ContainerState) -> None:
    data = {"status": current.status, "generation": current.generation,
            "since": current.since, "deadline": current.deadline, "busy": current.busy,
            "reason": current.reason}
    text = f"{current.status} since {when(current.since)} (generation {current.generation})"
    if current.deadline and current.status == Status.RUNNING:
        text += f"\nsleeps after {when(current.deadline)} unless used"
    if current.reason:
        text += f"\nreason: {current.reason}"
    emit(args, data, text)


class _Progress:
    """Each change of status on stderr, with the seconds since the command began."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last: Status | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def show(self, current: ContainerState) -> None:
        if current.status != self.last:
            progress(f"  {self.elapsed:5.1f} s  {current.status}")
            self.last = current.status


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
        waking = asyncio.ensure_future(lifecycle.wake(args.timeout))
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
            raise CliError(f"still {current.status} after {args.timeout:g} s")
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
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    p.set_defaults(run=wake)
    p = subparsers.add_parser("sleep", parents=[common], help="stop the workspace gracefully")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    p.set_defaults(run=sleep)
    p = subparsers.add_parser("reap", parents=[common],
                              help="stop a container that hung past its idle deadline")
    p.add_argument("--grace", type=float, default=300,
                   help="seconds past the deadline before reaping (default 300)")
    p.set_defaults(run=reap_overdue)
