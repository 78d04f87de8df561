"""The container's life: start opencode, register it, serve until told to stop or it dies.

Exit status is the contract with every compute backend: 0 means "asleep, power
off"; anything else means opencode crashed (the state item says why).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from container.hooks import run_stop_hooks
from container.opencode import OpencodeFailed, OpencodeServer, opencode_environment
from container.watcher import KeepAlive
from infra.backends import open_backends
from infra.interfaces import STARTING
from infra.lifecycle import Deadline, Lifecycle
from infra.settings import Settings, SettingsError

log = logging.getLogger("ocedge.container")


async def run(settings: Settings) -> int:
    backends = open_backends(settings)
    lifecycle = Lifecycle(backends.state)
    owner = f"container:{socket.gethostname()}:{os.getpid()}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    env = opencode_environment(settings.opencode_env, settings.system_env,
                               settings.opencode_data)
    server = OpencodeServer(settings.opencode_bin, settings.workspace_path, env)
    try:
        await server.start()
        await server.wait_ready(settings.opencode_start_timeout)
    except OpencodeFailed as exc:
        log.error("%s", exc)
        await server.stop()
        current = await backends.state.get()
        if current.status == STARTING:
            await lifecycle.mark_failed_if(current, str(exc))
        return 1

    state = await lifecycle.register_running(
        f"127.0.0.1:{server.port}", server.password, None, settings.idle_timeout, owner)
    generation = state.generation
    log.info("opencode is ready at %s (generation %d)", server.url, generation)

    keepalive = KeepAlive(server.url, server.auth, backends.state, generation,
                          Deadline(backends.state, settings.idle_timeout, owner))
    check_every = min(5.0, max(0.2, settings.idle_timeout / 20))
    follow = asyncio.ensure_future(keepalive.follow())
    exited = asyncio.ensure_future(server.wait())
    stopping = asyncio.ensure_future(stop.wait())
    idle = asyncio.ensure_future(keepalive.wait_until_idle(check_every))
    await asyncio.wait({exited, stopping, idle}, return_when=asyncio.FIRST_COMPLETED)
    for task in (follow, stopping, idle):
        task.cancel()

    if not exited.done():
        why = "stop requested" if stopping.done() and not stopping.cancelled() else "idle"
        log.info("%s: going to sleep", why)
        await lifecycle.mark_stopping(generation)
        # We asked opencode to stop: however it ended (status, signal, or killed
        # after the grace time), the container is asleep.
        code = await server.stop()
        log.info("opencode stopped (status %d)", code)
        await run_stop_hooks(settings)
        await lifecycle.mark_stopped(generation)
        log.info("asleep")
        return 0
    crashed = exited.result()
    log.error("opencode exited by itself with status %s", crashed)
    await lifecycle.mark_stopped(generation, f"opencode crashed (exit status {crashed})")
    return crashed if crashed > 0 else 1


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"container: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(settings))
