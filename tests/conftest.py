"""Shared fixtures. Tests that need opencode or Chromium fail (never skip) with a
message naming what is missing: `make test` installs both."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import find_opencode
from tests.support.edge import EdgeServer, make_settings, running_edge
from tests.support.fake_model import FakeModelServer
from tests.support.procs import RUN_MARKER, leftovers


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the run, no process this run started may still be running:
    neither pytest's descendants, nor orphans carrying this run's marker, nor
    anything working in this run's temporary directories. Other runs (other
    checkouts, other pytest processes of this one) are not counted. Set up first,
    so it is torn down last, after every other fixture stopped what it started."""
    run_id = f"{os.getpid()}-{secrets.token_hex(4)}"
    os.environ[RUN_MARKER] = run_id
    yield
    roots = [tmp_path_factory.getbasetemp().resolve()]
    deadline = time.monotonic() + 15  # containers stopping in the background
    while (left := leftovers(run_id, roots)) and time.monotonic() < deadline:
        time.sleep(0.25)
    for process in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)
    if left:
        listing = "\n".join(f"  {p.pid} ({p.why}): {p.command}" for p in left)
        pytest.fail(f"{len(left)} process(es) started by this test run were still running at "
                    f"its end (now killed):\n{listing}", pytrace=False)


@pytest.fixture(scope="session")
def opencode_bin() -> str:
    path = find_opencode()
    if not (os.path.isabs(path) and os.access(path, os.X_OK)) and not shutil.which(path):
        pytest.fail("opencode is not installed: run `make setup` (npm ci installs the pinned "
                    "opencode-ai into node_modules/)")
    return path


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail("Chromium is not installed: run `make setup-test` (apt-get install chromium)")
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def edge(state_dir: Path) -> Iterator[EdgeServer]:
    """An edge with local backends and no container started yet."""
    with running_edge(make_settings(state_dir)) as server:
        yield server


@pytest.fixture(scope="session")
def fake_model() -> Iterator[FakeModelServer]:
    """An OpenAI-compatible model server that opencode is configured to use."""
    with FakeModelServer() as server:
        yield server


@pytest.fixture(scope="module")
def live_edge(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
              fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    """An edge in front of the real opencode container (started by the first request),
    with the fake model as opencode's provider."""
    settings = make_settings(tmp_path_factory.mktemp("live"), model_url=fake_model.base_url)
    with running_edge(settings) as server:
        yield server
