"""Steps that run when the container goes to sleep, after opencode has stopped and
before the state says "stopped": where persistence checkpoints its data."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from infra.settings import Settings

log = logging.getLogger("ocedge.container")

StopHook = Callable[[Settings], Awaitable[None]]

_stop_hooks: list[StopHook] = []


def on_stop(hook: StopHook) -> StopHook:
    """Register a checkpoint step (decorator)."""
    _stop_hooks.append(hook)
    return hook


async def run_stop_hooks(settings: Settings) -> None:
    for hook in _stop_hooks:
        name = getattr(hook, "__name__", repr(hook))
        log.info("checkpoint: %s", name)
        try:
            await hook(settings)
        except Exception:
            # Keep going: one failed step must not skip the others.
            log.exception("checkpoint step %s failed", name)
