"""The real container entrypoint on a host with an identity (OCEDGE_INSTANCE_ID, as
the EC2 host's user data sets it): nothing asked of this host means it exits "asleep"
(the host powers off again) before it touches the workspace."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from infra.backends import backends_for_tools
from infra.interfaces import ContainerState, Status
from infra.lifecycle import EXIT_ASLEEP
from infra.settings import Settings
from tests.support.edge import make_settings

ROOT = Path(__file__).resolve().parents[2]


def _run_container(settings: Settings, instance: str) -> subprocess.CompletedProcess[str]:
    """``python -m container`` as the host runs it, told which instance it is on."""
    env = settings.with_overrides(instance_id=instance).child_env()
    return subprocess.run([sys.executable, "-m", "container"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_container_nobody_asked_for_exits_asleep_without_opening_the_workspace(
        state_dir: Path) -> None:
    settings = make_settings(state_dir)
    backends = backends_for_tools(settings)
    # A start was asked, but of another instance (the one this stack replaced).
    elsewhere = ContainerState(status=Status.STARTING, generation=4, since=time.time(),
                               host="i-0ld00000000000000")
    assert asyncio.run(backends.state.put_if(0, elsewhere))

    done = _run_container(settings, "i-0123456789abcdef0")
    assert done.returncode == EXIT_ASLEEP, done.stderr
    assert "no start was asked of this host" in done.stderr
    assert asyncio.run(backends.state.get()) == elsewhere  # nothing written
    assert not (state_dir / "workspace").exists()  # nothing opened


def test_a_container_asked_for_claims_the_start_before_anything_else(state_dir: Path) -> None:
    settings = make_settings(state_dir, opencode_bin=str(state_dir / "no-opencode"))
    backends = backends_for_tools(settings)
    lease = ContainerState(status=Status.STARTING, generation=4, since=time.time(),
                           host="i-0123456789abcdef0")
    assert asyncio.run(backends.state.put_if(0, lease))

    done = _run_container(settings, "i-0123456789abcdef0")
    # It claimed the start (a new generation fences any older container), then failed
    # to start opencode and said so in the state item: a crash, not "asleep".
    assert done.returncode not in (0, EXIT_ASLEEP), done.stderr
    assert "claimed the start asked of i-0123456789abcdef0 (generation 5)" in done.stderr
    after = asyncio.run(backends.state.get())
    assert (after.status, after.generation) == (Status.FAILED, 5)
    assert after.reason and "opencode" in after.reason
