"""Closed-loop HTTP load: wrk when installed, an httpx generator only as a fallback."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.procs import cpu_seconds
from bench.stack import BenchError, Target
from bench.stats import percentile

# wrk reports through this hook: one JSON line, latencies in microseconds.
_WRK_REPORT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"errors":%d,"non_2xx":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int  # socket errors, timeouts and non-2xx answers
    # CPU the target's own processes used per request (NaN when it has none to watch).
    cpu_us: float = float("nan")


class LoadGenerator:
    """Runs ``connections`` keep-alive connections against a target for ``duration`` s."""

    def __init__(self, workdir: Path) -> None:
        self.wrk = shutil.which("wrk")
        self.script = workdir / "report.lua"
        self.script.write_text(_WRK_REPORT)

    @property
    def name(self) -> str:
        return "wrk" if self.wrk else "httpx (wrk not installed: numbers are client-bound)"

    def run(self, target: Target, path: str, connections: int, duration: float) -> LoadResult:
        """Load ``target`` and measure its processes' CPU time over the same interval."""
        before = cpu_seconds(target.pids)
        result = self._load(target, path, connections, duration)
        if not target.pids or result.requests <= 0:
            return result
        used = cpu_seconds(target.pids) - before
        return replace(result, cpu_us=used / result.requests * 1e6)

    def _load(self, target: Target, path: str, connections: int, duration: float) -> LoadResult:
        if self.wrk is None:
            return asyncio.run(_httpx_load(target, path, connections, duration))
        threads = min(connections, 2)
        # wrk takes whole seconds only.
        argv = [self.wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
                "--timeout", "5s", "-s", str(self.script),
                "-H", f"Authorization: {target.authorization}",
                f"http://127.0.0.1:{target.port}{path}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30,
                              check=False)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("{")), None)
        if done.returncode != 0 or line is None:
            raise BenchError(f"wrk failed against {target.name}: {done.stderr or done.stdout}")
        report = json.loads(line)
        return LoadResult(
            requests=report["requests"], rps=report["requests"] / (report["duration_us"] / 1e6),
            p50_ms=report["p50_us"] / 1000, p99_ms=report["p99_us"] / 1000,
            failed=report["errors"] + report["non_2xx"])


async def _httpx_load(target: Target, path: str, connections: int,
                      duration: float) -> LoadResult:
    import httpx

    latencies: list[float] = []
    failed = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{target.port}", limits=limits,
                                 headers={"Authorization": target.authorization},
                                 trust_env=False) as client:
        start = time.perf_counter()
        end = start + duration

        async def worker() -> None:
            nonlocal failed
            while (now := time.perf_counter()) < end:
                try:
                    response = await client.get(path)
                    ok = response.status_code < 300
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - now)
                else:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    if not latencies:
        raise BenchError(f"no request to {target.name} succeeded")
    return LoadResult(requests=len(latencies), rps=len(latencies) / elapsed,
                      p50_ms=percentile(latencies, 50) * 1000,
                      p99_ms=percentile(latencies, 99) * 1000, failed=failed)
