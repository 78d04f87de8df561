"""Issue 5's numbers: cold import time and memory of each Lambda entry module, and
the pinned-TLS edge → container link against plain loopback, measured in one run.

- entries: a fresh interpreter imports the module (what a Lambda init does);
  wall time minus a bare interpreter's, and the peak RSS (ru_maxrss), median of runs.
  The streaming entry is ``edge.app`` under uvicorn, so ``uvicorn`` is imported too.
- link: sequential GET /global/health over one kept-alive connection, straight to
  opencode on loopback vs through the container's TLS gate with the pinned
  certificate; interleaved rounds, ratio of the medians.
"""

from __future__ import annotations

import asyncio
import base64
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx

from bench.report import Check
from bench.stack import Target
from container.gate import Gate
from container.tls import make_certificate
from edge.links import pinned_context

ENTRIES = {
    "streaming (uvicorn + edge.app)": "import uvicorn, edge.app",
    "API Gateway (edge.lambda_api)": "import edge.lambda_api",
    "reaper (infra.aws.reaper_lambda)": "import infra.aws.reaper_lambda",
}
_PROBE = ("import resource, time; t = time.perf_counter(); {stmt}; "
          "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


@dataclass(frozen=True)
class EntryResult:
    name: str
    import_ms: float
    rss_mb: float


@dataclass(frozen=True)
class LinkResult:
    plain_rps: float
    tls_rps: float

    @property
    def ratio(self) -> float:
        return self.tls_rps / self.plain_rps


def measure_entries(runs: int = 7) -> list[EntryResult]:
    results = []
    for name, stmt in ENTRIES.items():
        times, rss = [], []
        for _ in range(runs):
            out = subprocess.run([sys.executable, "-c", _PROBE.format(stmt=stmt)],
                                 capture_output=True, text=True, check=True).stdout.split()
            times.append(float(out[0]) * 1000)
            rss.append(int(out[1]) / 1024)
        results.append(EntryResult(name, statistics.median(times), statistics.median(rss)))
    return results


def measure_link(direct: Target, rounds: int = 5, requests: int = 300) -> LinkResult:
    password = base64.b64decode(direct.authorization.split()[1]).decode().split(":", 1)[1]
    cert = make_certificate("127.0.0.1")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gate = Gate(b"Basic " + base64.b64encode(f"opencode:{password}".encode()), direct.port,
                cert.server_context(), upstream_authorization=direct.authorization.encode())
    port = asyncio.run_coroutine_threadsafe(gate.start("127.0.0.1", 0), loop).result(10)
    headers = {"Authorization": direct.authorization}

    def rate(url: str, verify: object) -> float:
        with httpx.Client(verify=verify, trust_env=False) as client:  # type: ignore[arg-type]
            client.get(url, headers=headers)  # connect (and handshake) outside the clock
            started = time.perf_counter()
            for _ in range(requests):
                client.get(url, headers=headers).raise_for_status()
            return requests / (time.perf_counter() - started)

    plain, tls = [], []
    try:
        for _ in range(rounds):
            plain.append(rate(f"http://127.0.0.1:{direct.port}/global/health", True))
            tls.append(rate(f"https://127.0.0.1:{port}/global/health",
                            pinned_context(cert.cert_pem)))
    finally:
        async def shutdown() -> None:
            await gate.close()
            # The clients have hung up: let the gate's relays end by themselves.
            # (Cancelling them makes Python 3.11's StreamReaderProtocol log a
            # spurious CancelledError traceback.)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=5)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    return LinkResult(statistics.median(plain), statistics.median(tls))


def lambda_checks(entries: list[EntryResult]) -> list[Check]:
    out = []
    for entry in entries:
        out.append(Check(f"import {entry.name}", f"{entry.import_ms:.0f} ms", "≤ 120 ms",
                         entry.import_ms <= 120))
        out.append(Check(f"RSS {entry.name}", f"{entry.rss_mb:.0f} MB", "≤ 45 MB",
                         entry.rss_mb <= 45))
    return out


def render_lambda(entries: list[EntryResult], link: LinkResult, checks: list[Check]) -> str:
    lines = ["Lambda entry modules (fresh interpreter, median)"]
    for check in checks:
        lines.append(f"  {check.label:<52}{check.measured:>10}{check.target:>12}  "
                     f"{'PASS' if check.ok else 'MISS'}")
    lines.append("Edge → container link, sequential GET /global/health on one connection")
    lines.append(f"  plain loopback {link.plain_rps:,.0f} req/s   pinned TLS through the gate "
                 f"{link.tls_rps:,.0f} req/s   ratio {link.ratio:.2f}")
    return "\n".join(lines)
