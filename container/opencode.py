"""The opencode server process: start it on loopback, wait until it answers, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("ocedge.container")

USERNAME = "opencode"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, deepest last)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class OpencodeFailed(RuntimeError):
    """opencode did not start or did not become ready."""


@dataclass
class OpencodeServer:
    binary: str
    workdir: Path
    env: Mapping[str, str]
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> httpx.BasicAuth:
        import httpx

        return httpx.BasicAuth(USERNAME, self.password)

    async def start(self) -> None:
        env = dict(self.env)
        env["OPENCODE_SERVER_USERNAME"] = USERNAME
        env["OPENCODE_SERVER_PASSWORD"] = self.password
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.process = await asyncio.create_subprocess_exec(
                self.binary, "web", "--hostname", "127.0.0.1", "--port", str(self.port),
                cwd=self.workdir, env=env, stdin=asyncio.subprocess.DEVNULL)
        except FileNotFoundError:
            raise OpencodeFailed(
                f"the opencode binary was not found at {self.binary!r}; install it with "
                "`npm ci` in the project (or set OCEDGE_OPENCODE_BIN)") from None
        log.info("opencode started (pid %d, port %d)", self.process.pid, self.port)

    async def wait_ready(self, timeout: float) -> None:
        """Poll /global/health with short per-request timeouts: opencode sometimes never
        answers the very first request that arrives as its port opens."""
        import httpx

        deadline = time.monotonic() + timeout
        probe = 0.25  # grows if opencode is slow to answer, so a busy start still passes
        async with httpx.AsyncClient(auth=self.auth, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    raise OpencodeFailed(
                        f"opencode exited with status {self.process.returncode} while starting")
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

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

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
        if self.process is None:
            return 0
        import httpx

        if self.process.returncode is None:
            try:
                async with httpx.AsyncClient(auth=self.auth, trust_env=False) as client:
                    await client.post(f"{self.url}/global/dispose", timeout=5.0)
            except httpx.HTTPError as exc:
                log.warning("opencode did not dispose its instances (%s); stopping anyway",
                            type(exc).__name__)
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            log.info("opencode did not exit within %.0f s of SIGTERM; killing it", timeout)
            for pid in [*descendants(self.process.pid), self.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await self.process.wait()
        return self.process.returncode or 0

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()


def opencode_environment(passthrough: Mapping[str, str], base: Mapping[str, str],
                         data_root: Path) -> dict[str, str]:
    """The environment opencode runs with: a minimal base, its own data directories,
    and the OPENCODE_* variables the container was given."""
    # The container's own AWS credentials are for the workspace and the stores,
    # not for the agent: opencode and its terminal do not inherit them.
    env = {k: v for k, v in base.items() if not k.startswith("AWS_")}
    env.setdefault("PATH", os.defpath)
    env.setdefault("HOME", str(data_root / "home"))
    # opencode's folder picker fails on a HOME that does not exist.
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
    env.setdefault("SHELL", "/bin/bash")
    env.setdefault("TERM", "xterm-256color")
    for name in ("data", "config", "state", "cache"):
        path = data_root / name
        path.mkdir(parents=True, exist_ok=True)
        env[f"XDG_{name.upper()}_HOME"] = str(path)
    env["OPENCODE_DISABLE_AUTOUPDATE"] = "1"
    env.update(passthrough)
    return env
