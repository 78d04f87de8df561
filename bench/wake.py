"""Wake time: sleeping deployment → first proxied 200, next to opencode's own bare
start time, measured in the same run and interleaved round by round.

- wake: the container is asleep (stopped through local compute, as `ocedge sleep`
  does); a non-browser GET /global/health through the edge wakes it; the clock
  stops at the first 200 the edge forwards.
- bare: `opencode web` started by hand with the same data directories, the clock
  stopping at its first 200 on /global/health (short per-request timeouts, as a
  readiness probe must use).

Target: wake ≤ bare start + 0.5 s.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from dataclasses import dataclass

import httpx

from bench.report import Check
from bench.stack import Stack
from container.opencode import OpencodeServer, opencode_environment
from infra.backends import backends_for_tools
from infra.interfaces import ASLEEP
from infra.local.compute import LocalCompute
from infra.net import free_port
from infra.settings import Settings


@dataclass(frozen=True)
class WakeResult:
    wake: list[float]
    bare: list[float]

    @property
    def added(self) -> float:
        return statistics.median(self.wake) - statistics.median(self.bare)


def _until_200(url: str, headers: dict[str, str], timeout: float, probe: float) -> float:
    started = time.monotonic()
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() - started < timeout:
            try:
                if client.get(url, headers=headers, timeout=probe).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


def _put_to_sleep(stack: Stack) -> None:
    settings = Settings.from_env({"OCEDGE_STATE_DIR": str(stack.state_dir)})
    backends = backends_for_tools(settings)
    # Requests of a load run that just ended may still be in the edge: one that meets
    # the stopping container wakes it again (as it should), so let them finish first.
    time.sleep(1.0)
    asyncio.run(LocalCompute(stack.state_dir).stop(timeout=30))
    deadline = time.monotonic() + 30
    while asyncio.run(backends.state.get()).status not in ASLEEP:
        if time.monotonic() > deadline:
            raise RuntimeError("the container did not go to sleep")
        time.sleep(0.05)


def _bare_start(stack: Stack) -> float:
    settings = Settings.from_env({"OCEDGE_STATE_DIR": str(stack.state_dir)})
    env = opencode_environment(settings.opencode_env, {"PATH": "/usr/bin:/bin",
                                                       "HOME": str(stack.root)},
                               settings.opencode_data)
    server = OpencodeServer(settings.opencode_bin, settings.workspace_path, env,
                            port=free_port())
    started = time.monotonic()
    process = subprocess.Popen(
        [server.binary, "web", "--hostname", "127.0.0.1", "--port", str(server.port)],
        cwd=settings.workspace_path,
        env={**env, "OPENCODE_SERVER_PASSWORD": server.password},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        auth = httpx.BasicAuth("opencode", server.password)
        with httpx.Client(trust_env=False, auth=auth) as client:
            while time.monotonic() - started < 60:
                try:
                    if client.get(f"{server.url}/global/health", timeout=0.25).status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        raise RuntimeError("bare opencode did not start within 60 s")
    finally:
        process.kill()
        process.wait()


def measure_wake(stack: Stack, rounds: int) -> WakeResult:
    edge = stack.targets["edge"]
    wake: list[float] = []
    bare: list[float] = []
    for _ in range(rounds):
        _put_to_sleep(stack)
        bare.append(_bare_start(stack))
        wake.append(_until_200(f"http://127.0.0.1:{edge.port}/global/health",
                               {"Authorization": edge.authorization}, 90, 60))
    return WakeResult(wake, bare)


def render_wake(result: WakeResult) -> str:
    ok = result.added <= 0.5
    return "\n".join([
        f"Wake (sleeping → first proxied 200), median of {len(result.wake)}",
        f"  wake {statistics.median(result.wake):.2f} s   bare opencode start "
        f"{statistics.median(result.bare):.2f} s   added {result.added:+.2f} s "
        f"(target ≤ +0.50 s: {'PASS' if ok else 'MISS'})",
    ])


def wake_check(result: WakeResult) -> Check:
    return Check("wake - bare opencode start", f"{result.added:+.2f} s", "≤ +0.50 s",
                 result.added <= 0.5)
