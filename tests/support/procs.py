"""Processes the tests start, found through /proc: is one alive, which belong to a
process group, and which were started by this test run (so the end-of-run check
can fail on any that is still there)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Set in the environment of the pytest process, so inherited by everything it starts
# (and on through opencode's children): which run a process belongs to. OPENCODE_*
# names reach the container's opencode too (settings pass them on).
RUN_MARKER = "OPENCODE_EDGE_TEST_RUN"


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running (a zombie has exited; it only waits to be reaped)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_group(pgid: int) -> list[int]:
    """Live members of process group ``pgid``."""
    return [pid for pid in pids() if (f := _stat(pid)) is not None and f[0] != "Z"
            and int(f[2]) == pgid]


def stop_group(pgid: int, timeout: float = 30.0) -> None:
    """SIGTERM the group, SIGKILL what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    deadline = time.monotonic() + timeout
    while process_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str
    why: str  # how it was recognised as this run's


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()[:200]
    except OSError:
        return "?"


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def leftovers(run_id: str, roots: Iterable[Path]) -> list[Leftover]:
    """Live processes of this test run other than pytest itself: its descendants,
    those carrying its run marker (orphans re-parented away from it), and those
    working in or named after its temporary directories."""
    me = os.getpid()
    marker = f"{RUN_MARKER}={run_id}".encode()
    # With the trailing slash: pytest-26 must not match another run's pytest-260.
    dirs = [str(root).rstrip("/") + "/" for root in roots]
    parents: dict[int, int] = {}
    for pid in pids():
        fields = _stat(pid)
        if fields is not None and fields[0] != "Z":
            parents[pid] = int(fields[1])

    def descends(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
            seen += 1
        return False

    found = []
    for pid in parents:
        if pid == me:
            continue
        if descends(pid):
            why = "child of this pytest"
        elif _environ_has(pid, marker):
            why = "started by this run"
        elif any((_cwd(pid) + "/").startswith(d) or d in _command(pid) + "/" for d in dirs):
            why = "works in this run's temporary directory"
        else:
            continue
        found.append(Leftover(pid, _command(pid), why))
    return found
