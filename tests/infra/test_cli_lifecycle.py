"""`ocedge wake` and `ocedge sleep` drive the one container lifecycle (infra.lifecycle):
a start that fails is marked failed, a start that went stale is recovered, a start
in progress is joined, never doubled. In-process, over the in-memory stores."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import infra.backends
from infra.cli import main
from infra.interfaces import Backends, ContainerState, Status
from tests.support.memory import MemoryCompute, MemoryKeyStore, MemoryStateStore

pytestmark = pytest.mark.unit


class NoSecrets:
    """Waking and sleeping never need a server secret (a SecretSource that says so)."""

    def read(self, name: str) -> str | None:
        raise AssertionError(f"the lifecycle commands read no secret ({name})")

    def create(self, name: str, text: str) -> bool:
        raise AssertionError("the lifecycle commands create no secret")

    def replace(self, name: str, text: str) -> None:
        raise AssertionError("the lifecycle commands replace no secret")

    def where(self, name: str) -> str:
        return f"nowhere ({name})"


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> MemoryStateStore:
    for name in [n for n in os.environ if n.startswith("OCEDGE_")]:
        monkeypatch.delenv(name)
    return MemoryStateStore()


@pytest.fixture
def compute(state: MemoryStateStore, monkeypatch: pytest.MonkeyPatch) -> MemoryCompute:
    """The memory host; the CLI opens it, with the memory stores, as its backends."""
    host = MemoryCompute(state=state)
    backends = Backends(MemoryKeyStore(), state, host, NoSecrets())
    monkeypatch.setattr(infra.backends, "backends_for_tools", lambda settings: backends)
    return host


def ocedge(tmp_path: Path, *argv: str) -> int:
    return main([*argv, "--state-dir", str(tmp_path)])


def test_wake_starts_the_container_once_and_reports_it_running(
        state: MemoryStateStore, compute: MemoryCompute, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert ocedge(tmp_path, "wake") == 0
    out, err = capsys.readouterr()
    assert "Waking the workspace" in err
    assert [line.split()[-1] for line in err.splitlines()[1:]][-1] == "running", err
    assert out.startswith("running"), out
    assert compute.starts == 1
    assert state.item.status == Status.RUNNING
    owners = [write.writer for write in state.writes]
    assert owners[0].startswith("cli:"), owners  # the start lease is the CLI's

    # Awake already: nothing more is started.
    assert ocedge(tmp_path, "wake") == 0
    assert compute.starts == 1


def test_wake_marks_a_start_that_fails(state: MemoryStateStore, compute: MemoryCompute,
                                       tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    compute.start_error = RuntimeError("no capacity in this zone")
    assert ocedge(tmp_path, "wake") == 2
    _, err = capsys.readouterr()
    assert "the container failed: could not start: no capacity in this zone" in err
    assert "Traceback" not in err
    # Recorded, so the next wake (from here or the edge) starts afresh.
    assert state.item.status == Status.FAILED and state.item.generation == 1
    assert compute.starts == 1


def test_wake_recovers_a_start_that_went_stale(state: MemoryStateStore,
                                               compute: MemoryCompute, tmp_path: Path) -> None:
    # Someone's start, long ago, whose host is not running: it will never register.
    state.item = ContainerState(status=Status.STARTING, generation=4,
                                since=time.time() - 3600, lease_owner="edge:gone:1")
    assert ocedge(tmp_path, "wake") == 0
    statuses = [(write.state.status, write.state.generation) for write in state.writes]
    assert statuses[:2] == [(Status.FAILED, 4), (Status.STARTING, 5)], statuses
    assert state.item.status == Status.RUNNING and compute.starts == 1


def test_wake_joins_a_start_in_progress(state: MemoryStateStore, compute: MemoryCompute,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # A fresh start by another process, whose host is up but has not registered: the
    # CLI waits for it (and gives up after --timeout) without starting a second one.
    state.item = ContainerState(status=Status.STARTING, generation=2, since=time.time(),
                                lease_owner="edge:other:1")
    compute.running = True
    assert ocedge(tmp_path, "wake", "--timeout", "0.5") == 2
    _, err = capsys.readouterr()
    assert "still starting after" in err
    assert compute.starts == 0 and state.writes == []


def test_sleep_stops_a_running_container_and_waits_for_it(
        state: MemoryStateStore, compute: MemoryCompute, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert ocedge(tmp_path, "wake") == 0
    capsys.readouterr()
    assert ocedge(tmp_path, "sleep") == 0
    out, err = capsys.readouterr()
    assert "Putting the workspace to sleep" in err
    assert out.startswith("stopped"), out
    assert compute.stops == 1 and not compute.running

    # Asleep already: nothing to stop.
    assert ocedge(tmp_path, "sleep") == 0
    assert compute.stops == 1
    assert state.item.status == Status.STOPPED
