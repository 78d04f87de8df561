"""The opencode server process: start it on loopback, wait until it answers, stop it.

It is a :class:`container.child.Child` — run as the agent's own user when the
container has one (:mod:`container.agent`) — with two differences from the workspace's
helpers. It stays in the container's process group, so a stop signal sent to the
group (``ocedge sleep``, Ctrl-C, the host going away) reaches it and whatever it
spawned, as it reaches the container. And its output goes straight to the
container's own: its descendants (terminals, language servers) inherit it, and on
Python 3.11 a pipe they kept open would keep ``wait`` from returning after opencode
itself exited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from container.agent import AgentUser
from container.child import Child
from infra.net import free_port

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("ocedge.container")

USERNAME = "opencode"


class OpencodeFailed(RuntimeError):
    """opencode did not start or did not become ready."""


@dataclass
class OpencodeServer:
    """``opencode web`` on 127.0.0.1:``port`` in ``workdir``, behind its own Basic auth
    (user ``opencode``, a fresh random ``password``); as ``user`` when given."""

    binary: str
    workdir: Path
    env: Mapping[str, str]
    user: AgentUser | None = None
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    child: Child | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> httpx.BasicAuth:
        import httpx

        return httpx.BasicAuth(USERNAME, self.password)

    async def start(self) -> None:
        """Start it; OpencodeFailed when the binary is missing."""
        env = dict(self.env)
        env["OPENCODE_SERVER_USERNAME"] = USERNAME
        env["OPENCODE_SERVER_PASSWORD"] = self.password
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.child = Child(
            "opencode", [self.binary, "web", "--hostname", "127.0.0.1", "--port", str(self.port)],
            env, cwd=self.workdir, own_session=False, log_output=False, user=self.user)
        try:
            await self.child.start()
        except FileNotFoundError:
            raise OpencodeFailed(
                f"the opencode binary was not found at {self.binary!r}; install it with "
                "`npm ci` in the project (or set OCEDGE_OPENCODE_BIN)") from None
        except PermissionError:
            raise OpencodeFailed(
                f"opencode cannot run as {self.user or 'this user'}: {self.binary!r} or "
                f"{self.workdir} is not accessible to it (every directory on the way must "
                f"be searchable, the binary executable)") from None
        log.info("opencode started (pid %d, port %d%s)", self.child.pid, self.port,
                 f", as {self.user}" if self.user else "")

    async def wait_ready(self, timeout: float) -> None:
        """Poll /global/health with short per-request timeouts: opencode sometimes never
        answers the very first request that arrives as its port opens."""
        import httpx

        deadline = time.monotonic() + timeout
        probe = 0.25  # grows if opencode is slow to answer, so a busy start still passes
        async with httpx.AsyncClient(auth=self.auth, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.child is not None and self.child.returncode is not None:
                    raise OpencodeFailed(
                        f"opencode exited with status {self.child.returncode} while starting")
                try:
                    response = await client.get(f"{self.url}/global/health", timeout=probe)
                    if response.status_code == 200 and response.json().get("healthy"):
                        return
                except httpx.TimeoutException:
                    probe = min(probe * 1.5, 2.0)
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.03)
        raise OpencodeFailed(f"opencode did not become ready within {timeout:.0f} s")

    async def stop(self, timeout: float = 3.0) -> int:
        """Dispose opencode's instances, SIGTERM, then SIGKILL after ``timeout``;
        returns the exit status.

        Once a project instance has booted, opencode 1.18 does not exit on SIGTERM
        or SIGINT until its instances are disposed, so ask it to dispose them over
        its own API first. Even then it sometimes never exits (a race inside
        opencode, seen in about half of the tries here), so the wait is bounded and
        then opencode and everything it spawned are killed: SQLite commits survive
        a kill.
        """
        if self.child is None:
            return 0
        import httpx

        if self.child.running:
            try:
                async with httpx.AsyncClient(auth=self.auth, trust_env=False) as client:
                    await client.post(f"{self.url}/global/dispose", timeout=5.0)
            except httpx.HTTPError as exc:
                log.warning("opencode did not dispose its instances (%s); stopping anyway",
                            type(exc).__name__)
        self.child.signal(signal.SIGTERM)
        code = await self.child.wait(timeout)
        if code is None:
            log.info("opencode did not exit within %.0f s of SIGTERM; killing it", timeout)
            code = await self.child.kill(tree=True)
        if self.user is not None:
            # Whatever the agent started and detached ends with it, before the
            # workspace is saved.
            self.user.end_processes()
        return code or 0

    async def wait(self) -> int:
        """Its exit status, once it exits."""
        assert self.child is not None
        code = await self.child.wait()
        assert code is not None
        return code


def opencode_environment(passthrough: Mapping[str, str], base: Mapping[str, str],
                         data_root: Path, user: AgentUser | None = None) -> dict[str, str]:
    """The environment opencode runs with: a minimal base, its own data directories
    (the agent's, when it has a user of its own), and the OPENCODE_* variables the
    container was given."""
    # The container's own AWS credentials are for the workspace and the stores,
    # not for the agent: opencode and its terminal do not inherit them.
    env = {k: v for k, v in base.items() if not k.startswith("AWS_")}
    env.setdefault("PATH", os.defpath)
    if user is not None:
        # Its own HOME, never the container's (where a credentials file could be).
        env["HOME"] = str(data_root / "home")
        env["USER"] = env["LOGNAME"] = user.name or str(user.uid)
    env.setdefault("HOME", str(data_root / "home"))
    # opencode's folder picker fails on a HOME that does not exist.
    _directory(Path(env["HOME"]), user)
    env.setdefault("SHELL", "/bin/bash")
    env.setdefault("TERM", "xterm-256color")
    for name in ("data", "config", "state", "cache"):
        env[f"XDG_{name.upper()}_HOME"] = str(_directory(data_root / name, user))
    env["OPENCODE_DISABLE_AUTOUPDATE"] = "1"
    env.update(passthrough)
    return env


def _directory(path: Path, user: AgentUser | None) -> Path:
    if user is not None:
        return user.own(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
