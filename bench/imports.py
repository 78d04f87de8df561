"""Import time of ``edge.app`` in a fresh interpreter, the Lambda cold-start path."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats import median
from infra.settings import PROJECT_ROOT

_PROJECT_PACKAGES = frozenset({"edge", "infra", "container"})


@dataclass(frozen=True)
class ImportResult:
    """Medians of (import edge.app) - (bare interpreter), in CPU and in wall-clock ms.

    CPU time (user + system of the child) is what an idle host such as a fresh
    Lambda sandbox would see as wall time; wall time on a shared machine also
    counts the time spent waiting for a core.
    """

    ms: float  # CPU
    wall_ms: float
    runs: int
    heaviest: Sequence[tuple[str, float]]  # third-party packages by cumulative import ms


def _env() -> dict[str, str]:
    # No inherited import-time or bytecode settings may skew one side of the pair.
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE",
                         "PYTHONSTARTUP", "PYTHONPATH")}


def _elapsed(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(CPU, wall) seconds of one fresh interpreter running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime), wall


def _import_times(code: str, env: dict[str, str]) -> dict[str, float]:
    """``-X importtime``: each top-level package's largest cumulative import time, ms."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, text=True)
    packages: dict[str, float] = {}
    for line in done.stderr.splitlines():
        fields = line.split("|")
        if not line.startswith("import time:") or len(fields) != 3:
            continue
        try:
            cumulative_us = int(fields[1])
        except ValueError:
            continue  # the header line
        package = fields[2].strip().split(".")[0]
        packages[package] = max(packages.get(package, 0.0), cumulative_us / 1000)
    return packages


def _heaviest(env: dict[str, str], top: int = 5) -> list[tuple[str, float]]:
    """Third-party and stdlib packages edge.app pulls in beyond a bare interpreter."""
    bare = _import_times("pass", env)
    full = _import_times("import edge.app", env)
    extra = {name: ms for name, ms in full.items()
             if name not in bare and name not in _PROJECT_PACKAGES}
    return sorted(extra.items(), key=lambda item: -item[1])[:top]


def measure_import(runs: int) -> ImportResult:
    env = _env()
    _elapsed("import edge.app", env)  # compile bytecode once, warm the page cache
    cpu: list[float] = []
    wall: list[float] = []
    for n in range(runs):
        # Alternate which of the pair goes first so drift cancels out.
        if n % 2:
            full, bare = _elapsed("import edge.app", env), _elapsed("pass", env)
        else:
            bare, full = _elapsed("pass", env), _elapsed("import edge.app", env)
        cpu.append((full[0] - bare[0]) * 1000)
        wall.append((full[1] - bare[1]) * 1000)
    return ImportResult(ms=median(cpu), wall_ms=median(wall), runs=runs,
                        heaviest=_heaviest(env))
