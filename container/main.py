"""The container's life: open the workspace, start opencode on it, register, serve
until idle, told to stop or opencode dies, then save the workspace and exit.

Exit status is the contract with every compute backend: 0 means "asleep, power
off"; anything else means something failed: opencode or the workspace did not
start, opencode crashed, or the workspace could not be saved (the state item and
the log say which).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import sys
import time

from container.endpoint import public_host
from container.gate import Gate
from container.opencode import USERNAME, OpencodeFailed, OpencodeServer, opencode_environment
from container.providers import push_provider_keys
from container.tls import make_certificate
from container.watcher import KeepAlive
from container.workspace import Workspace, WorkspaceError, open_workspace
from infra.backends import backends_for_tools
from infra.deadline import Deadline
from infra.interfaces import Status
from infra.lifecycle import Lifecycle, process_owner
from infra.settings import Settings, SettingsError

log = logging.getLogger("ocedge.container")


async def run(settings: Settings) -> int:
    backends = backends_for_tools(settings)
    owner = process_owner("container")
    lifecycle = Lifecycle(backends.state, owner=owner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def failed_to_start(why: str) -> int:
        log.error("%s", why)
        current = await backends.state.get()
        if current.status == Status.STARTING:
            await lifecycle.mark_failed_if(current, why)
        return 1

    # 1. The workspace: mounted, opencode's config on it, its database restored.
    #    Nothing else starts unless this worked.
    try:
        workspace = open_workspace(settings)
        log.info("workspace: %s", workspace.describe())
        opening = time.monotonic()
        await workspace.open()
        log.info("workspace open in %.2f s", time.monotonic() - opening)
    except WorkspaceError as exc:
        return await failed_to_start(f"the workspace could not be opened: {exc}")

    # 2. opencode, on the workspace.
    env = opencode_environment(settings.opencode_env, settings.system_env,
                               settings.opencode_data)
    env.update(workspace.opencode_env())
    server = OpencodeServer(settings.opencode_bin, workspace.path, env)
    try:
        await server.start()
        await server.wait_ready(settings.opencode_start_timeout)
    except OpencodeFailed as exc:
        await server.stop()
        await save(workspace, time.monotonic() + settings.stop_budget)
        return await failed_to_start(str(exc))
    # Provider keys go in before anyone can send a prompt.
    await push_provider_keys(settings, backends, server.url, server.auth)
    await workspace.run()

    # The TLS gate: the only public listener, with this boot's certificate, which
    # the edge pins; without it (local mode) the edge dials opencode on loopback.
    endpoint, cert_pem, gate = f"127.0.0.1:{server.port}", None, None
    if settings.gate:
        try:
            host = await public_host(settings)
            certificate = make_certificate(host)
            expected = b"Basic " + base64.b64encode(f"{USERNAME}:{server.password}".encode())
            gate = Gate(expected, server.port, certificate.server_context())
            port = await gate.start(settings.gate_host, settings.gate_port)
        except (OSError, RuntimeError) as exc:
            await server.stop()
            await save(workspace, time.monotonic() + settings.stop_budget)
            return await failed_to_start(f"the TLS gate could not start: {exc}")
        endpoint, cert_pem = f"{host}:{port}", certificate.cert_pem

    # 3. Registered and serving until idle, told to stop, opencode dies or the
    #    workspace does (rclone or Litestream exited under it).
    state = await lifecycle.register_running(
        endpoint, server.password, cert_pem, settings.idle_timeout)
    generation = state.generation
    log.info("opencode is ready at %s (generation %d)", server.url, generation)

    keepalive = KeepAlive(server.url, server.auth, lifecycle, generation,
                          Deadline(backends.state, settings.idle_timeout, owner))
    check_every = min(5.0, max(0.2, settings.idle_timeout / 20))
    follow = asyncio.ensure_future(keepalive.follow())
    exited = asyncio.ensure_future(server.wait())
    stopping = asyncio.ensure_future(stop.wait())
    idle = asyncio.ensure_future(keepalive.wait_until_idle(check_every))
    broken = asyncio.ensure_future(workspace.broken())
    await asyncio.wait({exited, stopping, idle, broken}, return_when=asyncio.FIRST_COMPLETED)
    for task in (follow, stopping, idle):
        task.cancel()
    failure = broken.result() if broken.done() else None
    broken.cancel()
    if gate is not None:
        await gate.close()

    # 4. Every way out saves the workspace, within the stop budget: opencode stops
    #    first so nothing writes any more, then the database and the files go to S3.
    deadline = time.monotonic() + settings.stop_budget
    if failure is not None and not stop.is_set() and not exited.done():
        log.error("the workspace failed (%s): stopping opencode", failure)
        await lifecycle.mark_stopping(generation)
        await server.stop()
        problems = await save(workspace, deadline)
        await lifecycle.mark_stopped(
            generation, "; ".join([f"the workspace failed: {failure}", *problems]))
        return 1
    # A stop signal sent to the whole process group reaches opencode too, which may
    # then exit first: that is still a requested stop, not a crash.
    if stop.is_set() or not exited.done():
        why = "stop requested" if stop.is_set() else "idle"
        log.info("%s: going to sleep", why)
        await lifecycle.mark_stopping(generation)
        # We asked opencode to stop: however it ended (status, signal, or killed
        # after the grace time), the container is asleep.
        code = await server.stop()
        log.info("opencode stopped (status %d)", code)
        problems = await save(workspace, deadline)
        if problems:
            await lifecycle.mark_stopped(generation, "; ".join(problems))
            return 1
        await lifecycle.mark_stopped(generation)
        log.info("asleep")
        return 0
    crashed = exited.result()
    log.error("opencode exited by itself with status %s", crashed)
    problems = await save(workspace, deadline)
    await lifecycle.mark_stopped(
        generation, "; ".join([f"opencode crashed (exit status {crashed})", *problems]))
    return crashed if crashed > 0 else 1


async def save(workspace: Workspace, deadline: float) -> list[str]:
    """Close the workspace (opencode has stopped); returns what could not be saved."""
    problems = await workspace.close(deadline)
    for problem in problems:
        log.error("NOT SAVED: %s", problem)
    return problems


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"container: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO (health polls, rclone's remote control).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(run(settings))
