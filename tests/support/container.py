"""``python -m container`` driven as a compute backend drives it: its own process group,
SIGTERM for a graceful stop, SIGKILL for a crash; optionally behind a wrapper command
(``ip netns exec NAME``). Every process it leaves is stopped by its PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx

from container.child import descendants
from infra.backends import backends_for_tools
from infra.interfaces import ContainerState, Status
from infra.settings import Settings
from tests.support.procs import alive


class Container:
    """``python -m container`` in its own process group, its output in a log file."""

    def __init__(self, settings: Settings, wrapper: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.wrapper = list(wrapper)
        self.env = {**settings.child_env(), **(env or {})}
        self.log = settings.state_dir / "container-test.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.state: ContainerState | None = None
        self.helpers: list[int] = []

    def _state(self) -> ContainerState:
        return asyncio.run(backends_for_tools(self.settings).state.get())

    def start(self, timeout: float = 120) -> Container:
        before = self._state().generation
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "container"], env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self._state()
            if current.status == Status.RUNNING and current.generation > before:
                self.state = current
                self.helpers = descendants(self.process.pid)
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"the container exited ({self.process.returncode}):\n"
                                     f"{self.output()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"the container did not start:\n{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self) -> httpx.Client:
        """A client of the registered endpoint with the registered credential: through
        the gate, pinned to its certificate, when the container runs one."""
        assert self.state is not None and self.state.endpoint
        auth = ("opencode", self.state.credential or "")
        if self.state.cert_pem:
            from edge.links import pinned_context

            return httpx.Client(base_url=f"https://{self.state.endpoint}", timeout=60,
                                auth=auth, trust_env=False,
                                verify=pinned_context(self.state.cert_pem))
        return httpx.Client(base_url=f"http://{self.state.endpoint}", timeout=60,
                            auth=auth, trust_env=False)

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM to the process group, as `ocedge sleep` sends it."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        code = self.process.wait(timeout)
        self._wait_helpers_gone()
        return code

    def kill(self) -> None:
        """SIGKILL to the process group: the host went away."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._wait_helpers_gone()

    def _wait_helpers_gone(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [pid for pid in self.helpers if alive(pid)]:
                return
            time.sleep(0.05)
        raise AssertionError(f"helper processes outlived the container: {self.helpers}")

    def cleanup(self) -> None:
        """Whatever a failed test left: processes (by PID) and the mount."""
        from container.workspace.fuse import fuse_mount_at

        if self.process is not None and self.process.poll() is None:
            self.helpers += descendants(self.process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        for pid in self.helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mountpoint = self.settings.workspace_path.resolve()
        if fuse_mount_at(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


@contextlib.contextmanager
def container(settings: Settings, wrapper: Sequence[str] = (),
              env: dict[str, str] | None = None) -> Iterator[Container]:
    driver = Container(settings, wrapper, env)
    try:
        yield driver
    finally:
        driver.cleanup()
