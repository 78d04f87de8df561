"""Watch and poke a deployment's container from a test: state, launches, processes, CLI.

Everything here reads what a user or operator could see too: the state item, the
launch log and container log in the state directory, the processes, `ocedge`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.interfaces import ContainerState
from infra.local.db import database
from tests.support import cli
from tests.support.edge import ADMIN_PASSWORD, EdgeServer
from tests.support.procs import alive

# Headers a browser sends: a navigation, and a background fetch/XHR.
NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none",
            "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) test"}
BACKGROUND = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin",
              "Accept": "application/json", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) test"}
ADMIN_AUTH = ("admin", ADMIN_PASSWORD)


def state(edge: EdgeServer) -> ContainerState:
    return edge.run(edge.edge.backends.state.get())


def launches(edge: EdgeServer) -> int:
    """How many times the edge's deployment launched its container (the launch log
    the local compute keeps in the state directory)."""
    try:
        return len((edge.settings.state_dir / "launches.log").read_text().splitlines())
    except FileNotFoundError:
        return 0


def writes(edge: EdgeServer, kind: str | None = None) -> list[tuple[float, str, str, str]]:
    """The local state store's audit of successful writes: (at, writer, kind, status)."""
    sql = "SELECT at, writer, kind, status FROM state_writes"
    args: tuple[str, ...] = ()
    if kind is not None:
        sql += " WHERE kind = ?"
        args = (kind,)
    db = database(edge.settings.state_dir.resolve())
    rows: list[tuple[float, str, str, str]] = db.run(
        lambda conn: conn.execute(sql + " ORDER BY at", args).fetchall())
    return rows


def generations(edge: EdgeServer) -> list[tuple[float, str, str, str, int]]:
    """The state puts of the audit with the generation each wrote: (at, writer, kind,
    status, generation)."""
    db = database(edge.settings.state_dir.resolve())
    rows: list[tuple[float, str, str, str, int]] = db.run(lambda conn: conn.execute(
        "SELECT at, writer, kind, status, generation FROM state_writes WHERE kind = 'put' "
        "ORDER BY at").fetchall())
    return rows


def wait_for(edge: EdgeServer, ok: Callable[[ContainerState], bool], timeout: float,
             what: str, poll: float = 0.1) -> ContainerState:
    deadline = time.monotonic() + timeout
    current = state(edge)
    while time.monotonic() < deadline:
        current = state(edge)
        if ok(current):
            return current
        time.sleep(poll)
    raise AssertionError(f"the state never became {what} within {timeout:.0f} s: {current}")


def wait_for_status(edge: EdgeServer, *statuses: str, timeout: float = 60) -> ContainerState:
    return wait_for(edge, lambda s: s.status in statuses, timeout, " or ".join(statuses))


def wait_until_asleep(edge: EdgeServer, timeout: float) -> ContainerState:
    """Wait for the container to put itself to sleep: the state says stopped and
    its process has exited (it writes the state ~0.1 s before it exits)."""
    asleep = wait_for_status(edge, "stopped", timeout=timeout)
    deadline = time.monotonic() + 10
    while container_pid(edge) is not None:
        assert time.monotonic() < deadline, "the container said stopped but never exited"
        time.sleep(0.02)
    return asleep


def ensure_asleep(edge: EdgeServer) -> ContainerState:
    """Put the container to sleep (as `ocedge sleep` would) if it is up."""
    current = state(edge)
    if current.status in ("stopped", "failed") and container_pid(edge) is None:
        return current
    edge.run(edge.edge.backends.compute.stop())
    return wait_for_status(edge, "stopped", "failed", timeout=60)


def container_pid(edge: EdgeServer) -> int | None:
    """The live container process of this deployment, if any."""
    try:
        pid = int((edge.settings.state_dir / "container.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def opencode_children(pid: int) -> list[int]:
    """The opencode server(s) among the container's child processes."""
    found = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except FileNotFoundError:
            continue
        if any(b"opencode" in arg for arg in argv[:2]):
            found.append(child)
    return found


def kill_group(pid: int) -> None:
    """Last-resort cleanup for a container a test froze or broke."""
    for sig in (signal.SIGKILL, signal.SIGCONT):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return


def container_log(edge: EdgeServer) -> str:
    try:
        return (edge.settings.state_dir / "container.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def tcp_connections(pid: int, peer_port: int) -> list[tuple[int, int]]:
    """Established TCP connections that process ``pid`` holds to 127.0.0.1:``peer_port``,
    as (local port, peer port)."""
    done = subprocess.run(["ss", "-tnpH", "state", "established", "dst", "127.0.0.1",
                           "dport", "=", f":{peer_port}"],
                          capture_output=True, text=True, check=True)
    found = []
    for line in done.stdout.splitlines():
        if f"pid={pid}," not in line:
            continue
        local, peer = line.split()[2:4]
        found.append((int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])))
    return found


def kill_tcp_connection(local_port: int, peer_port: int) -> str:
    """Destroy one TCP socket with `ss -K` (needs root and CONFIG_INET_DIAG_DESTROY):
    its owner sees the connection abort, as after a network drop."""
    done = subprocess.run(["ss", "-tnK", "src", f"127.0.0.1:{local_port}",
                           "dst", f"127.0.0.1:{peer_port}"],
                          capture_output=True, text=True, check=True)
    return done.stdout


def ocedge(*argv: str, settings_env: dict[str, str] | None = None, cwd: Path,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `ocedge` as a user would (no OCEDGE_* from the test's own env)."""
    return cli.ocedge(*argv, cwd=cwd, env=settings_env, timeout=timeout)


def cli_env(edge: EdgeServer) -> dict[str, str]:
    """What the operator's shell would hold so that `ocedge wake` starts the same
    container the edge would: its settings minus the state directory, which the
    tests pass with --state-dir."""
    env = edge.settings.child_env()
    env.pop("OCEDGE_STATE_DIR", None)
    return env


def status_json(edge: EdgeServer, cwd: Path) -> dict[str, Any]:
    done = ocedge("status", "--json", "--state-dir", str(edge.settings.state_dir), cwd=cwd,
                  timeout=30)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data
