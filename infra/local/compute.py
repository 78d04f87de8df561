"""Compute as a local child process running the container entrypoint.

The child runs ``python -m container`` in its own process group, so stopping it
reaches opencode and anything it spawned. Its PID is kept in the state directory
so that another process (the CLI) can describe and stop it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from infra.interfaces import ComputeInfo, HostBudget


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # Field 3 is the state; a zombie has exited but is not reaped yet.
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


class LocalCompute:
    def __init__(self, state_dir: Path, env: Mapping[str, str] | None = None,
                 command: list[str] | None = None, stop_timeout: float = 30.0) -> None:
        # How long a graceful stop may take before SIGKILL: the container's own
        # stop budget (flushing the workspace to S3) plus a margin.
        self.stop_timeout = stop_timeout
        # A child process has no host of its own to wait for (infra.lifecycle).
        self.host = "local"
        self.budget = HostBudget()
        self.state_dir = state_dir.resolve()
        self.env = dict(env or {})
        self.env["OCEDGE_STATE_DIR"] = str(self.state_dir)
        self.command = command or [sys.executable, "-m", "container"]
        self.pid_file = self.state_dir / "container.pid"
        self.log_file = self.state_dir / "container.log"
        self.launch_log = self.state_dir / "launches.log"
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _pid(self) -> int | None:
        if self._child is not None and self._child.poll() is None:
            return self._child.pid
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _start(self) -> None:
        with self._lock:
            # Callers hold the start lease, so a process still alive here is the
            # previous container on its way out: it wrote "stopped" a moment before
            # exiting. Wait for it (bounded) rather than mistake it for the new one.
            deadline = time.monotonic() + 15
            while self._pid() is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self._pid() is not None:
                return
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as log:
                self._child = subprocess.Popen(
                    self.command, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    cwd=self.state_dir)
            self.pid_file.write_text(str(self._child.pid))
            # One line per launch: how often the deployment woke, for the operator.
            with open(self.launch_log, "a") as launches:
                launches.write(f"{time.time():.3f} {self._child.pid}\n")

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _signal(self, sig: int) -> None:
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the process group; SIGKILL it if it has not exited in ``timeout``."""
        self._signal(signal.SIGTERM)
        # A stopped (frozen) process acts on SIGTERM only once it runs again.
        self._signal(signal.SIGCONT)
        deadline = time.monotonic() + (self.stop_timeout if timeout is None else timeout)
        while self._pid() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._pid() is not None:
            self._signal(signal.SIGKILL)

    async def describe(self) -> ComputeInfo:
        pid = self._pid()
        if pid is not None:
            return ComputeInfo(running=True, detail=f"pid {pid}")
        code = self._child.returncode if self._child is not None else None
        return ComputeInfo(running=False, exit_code=code)
