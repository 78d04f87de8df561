"""The container's child processes (opencode, and the workspace's rclone and
Litestream): started so that they never outlive it, stopped by their process id.

- The workspace's helpers run in their own session: a signal sent to the container's
  process group (``ocedge sleep``, Ctrl-C) reaches the container, which then stops them
  in order; rclone or Litestream would otherwise quit at once and drop pending uploads.
- Each gets PR_SET_PDEATHSIG: if the container dies (SIGKILL, crash), they die with
  it, as they would with the host, instead of lingering as orphans that hold the mount.
- Their output is logged line by line under their name, and the last lines are kept
  for error messages.
- One may run as the agent's user (:mod:`container.agent`): started with that uid, gid
  and its own groups only, umask 022, and no_new_privs, so no setuid program gives it
  back what it gave up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from container.agent import AgentUser

log = logging.getLogger("ocedge.container")

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
# Loaded here, not in the forked child: dlopen after fork is not safe with threads.
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(sig: int, parent: int, confined: bool) -> Callable[[], None]:
    # Runs after the switch to another user (which would clear the death signal).
    def preexec() -> None:
        if confined and _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            os._exit(1)
        _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != parent:
            os._exit(1)
    return preexec


class Child:
    """One child process; ``start`` it, ``stop`` or ``kill`` it, ``wait`` for it."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str],
                 on_parent_death: int = signal.SIGKILL, cwd: Path | None = None, *,
                 own_session: bool = True, log_output: bool = True,
                 user: AgentUser | None = None, pass_fds: Sequence[int] = ()) -> None:
        """``own_session=False`` keeps it in the container's process group, so a signal to
        the group reaches it too; ``log_output=False`` lets it write to the container's
        own output instead of a pipe (see :class:`container.opencode.OpencodeServer`);
        ``user``: run it as the agent's user; ``pass_fds``: descriptors it inherits."""
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.on_parent_death = on_parent_death
        self.cwd = cwd
        self.own_session = own_session
        self.log_output = log_output
        self.user = user
        self.pass_fds = tuple(pass_fds)
        self.process: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=20)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start it; FileNotFoundError when the binary is missing."""
        # Not logged: straight to the container's own stdout and stderr (None).
        stdout, stderr = ((asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT)
                          if self.log_output else (None, None))
        identity: dict[str, Any] = {}
        if self.user is not None:
            identity = {"user": self.user.uid, "group": self.user.gid,
                        "extra_groups": self.user.groups, "umask": 0o022}
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout, stderr=stderr,
            start_new_session=self.own_session,
            preexec_fn=_die_with_parent(self.on_parent_death, os.getpid(),
                                        confined=self.user is not None),
            pass_fds=self.pass_fds, **identity)
        if self.log_output:
            self._reader = asyncio.ensure_future(self._read_output())
        log.debug("%s started (pid %d)", self.name, self.process.pid)

    async def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                self._tail.append(text)
                log.info("%s: %s", self.name, text)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def tail(self, lines: int = 5) -> str:
        """Its last lines of output, for an error message."""
        return "\n".join(list(self._tail)[-lines:]) or "(no output)"

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status, or None if it is still running after ``timeout``."""
        if self.process is None:
            return None
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return None
        if self._reader is not None:
            # The pipe closes with the process; let the reader log the last lines.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
        return code

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if not self.running:
            return self.returncode
        self.signal(signal.SIGTERM)
        code = await self.wait(max(0.0, timeout))
        if code is None:
            log.warning("%s did not exit within %.1f s of SIGTERM; killing it", self.name, timeout)
            code = await self.kill()
        return code

    async def kill(self, tree: bool = False) -> int | None:
        """SIGKILL (``tree``: and every process it started, found before it dies, when
        they would otherwise be orphaned); returns its exit status."""
        if not self.running:
            return self.returncode
        if tree:
            for pid in descendants(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.signal(signal.SIGKILL)
        return await self.wait()


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
