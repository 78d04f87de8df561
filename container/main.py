"""The container's life: open the workspace, start opencode on it, register, serve
until idle, told to stop or opencode dies, then save the workspace and exit.

Exit status is the contract with every compute backend (deploy/host/ocedge.service):

- ``EXIT_ASLEEP`` (10): asleep — idle past the deadline and saved, or nothing was
  asked of this host — so power the host off. The only status that does;
- 0: stopped because it was told to (SIGTERM: the host is shutting down, or an
  operator stopped it), workspace saved; the host does nothing more;
- anything else: something failed — opencode or the workspace did not start,
  opencode crashed, the workspace could not be saved, or a newer generation took
  over (the state item and the log say which); the host restarts the container.

On a host with an identity (``OCEDGE_INSTANCE_ID``: an EC2 instance) the container
first claims the start that was asked of that host, before it touches the
workspace, and registers only while that claim holds: a host nobody asked, or one
whose start was handed to another, never runs a second container on the bucket.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import signal
import sys
import time

from container.agent import AgentUserError, agent_user
from container.agent_secrets import agent_environment
from container.endpoint import public_host
from container.gate import Gate
from container.notices import notices_for
from container.opencode import USERNAME, OpencodeFailed, OpencodeServer, opencode_environment
from container.providers import push_provider_keys
from container.terminal import TerminalListener
from container.tls import make_certificate
from container.watcher import SUPERSEDED, KeepAlive
from container.workspace import Workspace, WorkspaceError, open_workspace
from infra.backends import backends_for_tools
from infra.deadline import Deadline
from infra.interfaces import Status
from infra.lifecycle import EXIT_ASLEEP, STEP_CONTAINER, Lifecycle, process_owner
from infra.progress import STEP_OPENCODE, STEP_WORKSPACE
from infra.settings import Settings, SettingsError

log = logging.getLogger("ocedge.container")


async def run(settings: Settings) -> int:
    backends = backends_for_tools(settings)
    owner = process_owner("container")
    lifecycle = Lifecycle(backends.state, owner=owner, host=settings.instance_id)
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

    # 0. On a host with an identity: only a start asked of this host, claimed before
    #    anything is restored, so an older container elsewhere is fenced off first.
    claim = None
    if settings.instance_id:
        claim = await lifecycle.claim()
        if claim is None:
            current = await backends.state.get()
            log.info("no start was asked of this host (%s; the deployment is %s on %s): "
                     "nothing to do, asleep", settings.instance_id, current.status,
                     current.host or "no host")
            return EXIT_ASLEEP
        log.info("claimed the start asked of %s (generation %d)", settings.instance_id,
                 claim.generation)

    # Each step of this start goes in the state item for whoever shows the wake
    # (infra/progress.py), written only while that start is still starting.
    asked = await backends.state.get()
    start_generation = claim.generation if claim is not None else (
        asked.generation if asked.status == Status.STARTING else None)

    async def step(name: str) -> None:
        nonlocal claim
        if start_generation is None:
            return
        recorded = await lifecycle.record_step(start_generation, name)
        if claim is not None and recorded is not None:
            claim = recorded  # registering writes on top of it: keep the steps

    if claim is None:
        await step(STEP_CONTAINER)  # a claim records it itself

    # The agent's own user (on AWS): the container's files made private, the agent's
    # directories its own (container/agent.py).
    try:
        agent = agent_user(settings)
        if agent is not None:
            agent.prepare(settings)
    except (AgentUserError, OSError) as exc:
        return await failed_to_start(f"opencode's user could not be set up: {exc}")

    # 1. The workspace: mounted, opencode's config on it, its database restored.
    #    Nothing else starts unless this worked.
    try:
        workspace = open_workspace(settings, agent)
        log.info("workspace: %s", workspace.describe())
        await step(STEP_WORKSPACE)
        opening = time.monotonic()
        await workspace.open()
        log.info("workspace open in %.2f s", time.monotonic() - opening)
    except WorkspaceError as exc:
        return await failed_to_start(f"the workspace could not be opened: {exc}")

    # 2. opencode, on the workspace.
    env = opencode_environment(settings.opencode_env, settings.system_env,
                               settings.opencode_data, agent)
    env.update(workspace.opencode_env())
    env.update(await agent_environment(settings, backends))  # the agent's secrets
    server = OpencodeServer(settings.opencode_bin, workspace.path, env, agent)
    await step(STEP_OPENCODE)
    try:
        await server.start()
        await server.wait_ready(settings.opencode_start_timeout)
    except OpencodeFailed as exc:
        await server.stop()
        await save(workspace, time.monotonic() + settings.stop_budget)
        return await failed_to_start(str(exc))
    # Provider keys go in before anyone can send a prompt.
    await push_provider_keys(settings, backends, server.url, server.auth)

    # The TLS gate: the only public listener, with this boot's certificate, which
    # the edge pins; without it (local mode) the edge dials opencode on loopback.
    # The credential the edge presents: through the gate, the gate's own for this boot
    # (never opencode's password, which the agent can read in opencode's environment).
    endpoint, cert_pem, gate = f"127.0.0.1:{server.port}", None, None
    credential = server.password
    if settings.gate:
        try:
            host = await public_host(settings)
            certificate = make_certificate(host)
            credential = secrets.token_urlsafe(32)
            gate = Gate(_basic(credential), server.port, certificate.server_context(),
                        upstream_authorization=_basic(server.password))
            port = await gate.start(settings.gate_host, settings.gate_port)
        except (OSError, RuntimeError) as exc:
            await server.stop()
            await save(workspace, time.monotonic() + settings.stop_budget)
            return await failed_to_start(f"the TLS gate could not start: {exc}")
        endpoint, cert_pem = f"{host}:{port}", certificate.cert_pem

    # The terminal listener (container/terminal.py): on AWS, CloudFront's origin for the
    # terminal's WebSocket, relaying ticketed upgrades to opencode on loopback.
    terminal = None
    if settings.terminal_port and settings.origin_secret:  # Settings refuses one alone
        terminal = TerminalListener(settings.origin_secret, server.port, settings.public_url)
        try:
            await terminal.start(settings.terminal_host, settings.terminal_port)
        except OSError as exc:
            if gate is not None:
                await gate.close()
            await server.stop()
            await save(workspace, time.monotonic() + settings.stop_budget)
            return await failed_to_start(f"the terminal listener could not start: {exc}")

    async def close_listeners() -> None:
        if gate is not None:
            await gate.close()
        if terminal is not None:
            await terminal.close()

    # 3. Registered (only while our claim holds) and serving until idle, told to stop,
    #    opencode dies or the workspace does (rclone or Litestream exited under it).
    if claim is None:
        state = await lifecycle.register_running(
            endpoint, credential, cert_pem, settings.idle_timeout)
    else:
        registered = await lifecycle.register_claimed(
            claim, endpoint, credential, cert_pem, settings.idle_timeout)
        if registered is None:
            log.error("the start of %s was taken over meanwhile (the deployment moved on "
                      "from generation %d): this container must not serve it",
                      settings.instance_id, claim.generation)
            await close_listeners()
            await server.stop()
            await save(workspace, time.monotonic() + settings.stop_budget)
            return 1
        state = registered
    generation = state.generation
    # Replication starts once this container is the registered one.
    await workspace.run()
    log.info("opencode is ready at %s (generation %d)", server.url, generation)

    notices = await notices_for(settings, backends, server.url, server.auth)
    keepalive = KeepAlive(server.url, server.auth, lifecycle, generation,
                          Deadline(backends.state, settings.idle_timeout, owner), notices=notices)
    if terminal is not None:
        # Typing in the terminal is activity; on AWS it reaches the container directly.
        terminal.on_activity = keepalive.activity
    check_every = min(5.0, max(0.2, settings.idle_timeout / 20))
    follow = asyncio.ensure_future(keepalive.follow())
    exited = asyncio.ensure_future(server.wait())
    stopping = asyncio.ensure_future(stop.wait())
    idle = asyncio.ensure_future(keepalive.wait_until_idle(check_every))
    broken = asyncio.ensure_future(workspace.broken())
    await asyncio.wait({exited, stopping, idle, broken}, return_when=asyncio.FIRST_COMPLETED)
    for task in (follow, stopping, idle):
        task.cancel()
    await notices.close()  # never waits for a notice still being delivered
    failure = broken.result() if broken.done() else None
    broken.cancel()
    await close_listeners()

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
        superseded = (not stop.is_set() and idle.done() and not idle.cancelled()
                      and idle.exception() is None and idle.result() == SUPERSEDED)
        why = "stop requested" if stop.is_set() else (
            "a newer generation took over" if superseded else "idle")
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
        if stop.is_set():
            log.info("stopped as asked")
            return 0
        if superseded:
            # The host restarts the container, which then claims what was asked of it.
            return 1
        log.info("asleep")
        return EXIT_ASLEEP
    crashed = exited.result()
    log.error("opencode exited by itself with status %s", crashed)
    problems = await save(workspace, deadline)
    await lifecycle.mark_stopped(
        generation, "; ".join([f"opencode crashed (exit status {crashed})", *problems]))
    return crashed if crashed > 0 else 1


def _basic(password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{USERNAME}:{password}".encode())


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
