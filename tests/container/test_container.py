"""The container entrypoint with the real opencode: start, register, stop, fail clearly."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra.backends import backends_for_tools
from infra.interfaces import ContainerState, Status
from infra.lifecycle import Lifecycle
from infra.settings import Settings
from tests.support.edge import make_settings


def _state(settings: Settings) -> ContainerState:
    return asyncio.run(backends_for_tools(settings).state.get())


def _wait_for(settings: Settings, status: Status, timeout: float = 60) -> ContainerState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = _state(settings)
        if current.status == status:
            return current
        time.sleep(0.1)
    raise AssertionError(f"state never became {status}: {_state(settings)}")


def _start(settings: Settings) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "container"], env=settings.child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_container_registers_opencode_and_sleeps_on_sigterm(state_dir: Path,
                                                             opencode_bin: str) -> None:
    marker = {"username": "edge-passthrough-probe"}
    settings = make_settings(state_dir).with_overrides(
        opencode_env={"OPENCODE_CONFIG_CONTENT": json.dumps(marker)})
    proc = _start(settings)
    try:
        running = _wait_for(settings, Status.RUNNING)
        assert running.endpoint and running.endpoint.startswith("127.0.0.1:")
        url = f"http://{running.endpoint}"
        assert httpx.get(f"{url}/global/health", timeout=5).status_code == 401
        auth = ("opencode", running.credential or "")
        health = httpx.get(f"{url}/global/health", auth=auth, timeout=5)
        assert health.status_code == 200 and health.json()["healthy"] is True
        # OPENCODE_* given to the container reach opencode.
        config = httpx.get(f"{url}/config", auth=auth, timeout=5).json()
        assert config.get("username") == "edge-passthrough-probe"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stdout.read() if proc.stdout else ""
        stopped = _state(settings)
        assert stopped.status == Status.STOPPED and stopped.reason is None
        assert stopped.endpoint is None and stopped.credential is None
        # opencode itself is gone with it.
        try:
            httpx.get(f"{url}/global/health", timeout=2)
            raise AssertionError("opencode still answers after the container stopped")
        except httpx.ConnectError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_container_with_missing_opencode_fails_clearly(state_dir: Path) -> None:
    settings = make_settings(state_dir, opencode_bin=str(state_dir / "no-such-opencode"))
    backends = backends_for_tools(settings)
    asyncio.run(Lifecycle(backends.state, owner="test").begin_start())
    proc = _start(settings)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "opencode binary was not found" in out
    failed = _state(settings)
    assert failed.status == Status.FAILED
    assert failed.reason and "not found" in failed.reason


def test_crashed_opencode_makes_the_container_exit_nonzero(state_dir: Path,
                                                           opencode_bin: str) -> None:
    settings = make_settings(state_dir)
    proc = _start(settings)
    try:
        _wait_for(settings, Status.RUNNING)
        # Kill opencode (the container's child), not the container, as a crash would.
        pids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
        assert pids, "opencode process not found"
        for pid in pids:
            subprocess.run(["kill", "-9", pid], check=False)
        assert proc.wait(timeout=30) != 0
        failed = _state(settings)
        assert failed.status == Status.FAILED and "crashed" in (failed.reason or "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
