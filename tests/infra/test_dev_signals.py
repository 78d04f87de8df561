"""``ocedge dev`` leaves nothing behind: SIGTERM (a process manager, ``kill``,
``timeout``), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) each stop the
container gracefully — it writes "stopped" itself — within the stop budget; and a
container whose edge was SIGKILLed still stops itself within its idle timeout.

Each test runs the real ``ocedge dev`` console script and the real container."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from infra.net import free_port
from tests.support.cli import OCEDGE
from tests.support.edge import ADMIN_PASSWORD
from tests.support.procs import alive, process_group, stop_group

pytestmark = pytest.mark.opencode

ADMIN = {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()}
STOP_BUDGET = 20.0
IDLE_TIMEOUT = 6.0


@contextmanager
def ocedge_dev(state_dir: Path, opencode_bin: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("OCEDGE_")}
    process = subprocess.Popen(
        [str(OCEDGE), "dev", "--port", str(port)], text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=base | {"OCEDGE_STATE_DIR": str(state_dir), "OCEDGE_ADMIN_PASSWORD": ADMIN_PASSWORD,
                    "OCEDGE_OPENCODE_BIN": opencode_bin,
                    "OCEDGE_STOP_BUDGET": str(STOP_BUDGET), "HOME": str(state_dir / "home"),
                    "npm_config_offline": "true", **env})
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        # Whatever the test did, nothing it started may outlive it.
        container = _container_pid(state_dir)
        if container is not None and process_group(container):
            stop_group(container)


def _container_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "container.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stop_signal_stops_the_container_gracefully_within_the_stop_budget(
        state_dir: Path, opencode_bin: str, signum: signal.Signals) -> None:
    with ocedge_dev(state_dir, opencode_bin) as (process, url):
        container = _wake_at(url, process, state_dir)
        group = process_group(container)
        assert len(group) >= 2, f"the container runs opencode beneath it: {group}"
        signalled = time.monotonic()
        process.send_signal(signum)
        output, _ = process.communicate(timeout=STOP_BUDGET + 30)
        took = time.monotonic() - signalled
        assert not any(alive(pid) for pid in group), (
            f"{signum.name} left {[p for p in group if alive(p)]} running:\n{output}")
        assert took <= STOP_BUDGET + 5, f"stopping took {took:.1f} s"
        assert process.returncode == 0, output
        # A graceful stop: the container wrote "stopped" itself (SIGKILL could not).
        log = (state_dir / "container.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        status = subprocess.run([str(OCEDGE), "status", "--json"], capture_output=True,
                                text=True, timeout=30, check=False,
                                env={**os.environ, "OCEDGE_STATE_DIR": str(state_dir)})
        assert '"stopped"' in status.stdout, status.stdout + status.stderr


def test_a_container_whose_edge_was_killed_stops_itself_within_its_idle_timeout(
        state_dir: Path, opencode_bin: str) -> None:
    with ocedge_dev(state_dir, opencode_bin,
                    OCEDGE_IDLE_TIMEOUT=str(IDLE_TIMEOUT)) as (process, url):
        container = _wake_at(url, process, state_dir)
        group = process_group(container)
        killed = time.monotonic()
        process.kill()
        process.wait(10)
        deadline = killed + IDLE_TIMEOUT + STOP_BUDGET
        while any(alive(pid) for pid in group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in group), (
            f"the orphaned container was still running {deadline - killed:.0f} s after "
            f"its edge was killed")


def _wake_at(url: str, process: subprocess.Popen[str], state_dir: Path) -> int:
    deadline = time.monotonic() + 90
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("ocedge dev exited early:\n"
                                 + (process.stdout.read() if process.stdout else ""))
        try:
            response = httpx.get(f"{url}/global/health", headers=ADMIN, timeout=30,
                                 trust_env=False)
            if response.status_code == 200:
                pid = _container_pid(state_dir)
                assert pid is not None and alive(pid)
                return pid
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"the container did not wake: {last}")
