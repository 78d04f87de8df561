"""The table ``python -m bench`` prints: measurements, then targets with PASS/MISS."""

from __future__ import annotations

from dataclasses import dataclass

from bench.health import ORDER, HealthResult
from bench.imports import ImportResult
from bench.sse import SseResult

# Targets the edge is held to.
MIN_THROUGHPUT_RATIO = 0.85
MAX_EXTRA_P50_MS = 0.5  # edge added p50 may exceed nginx added p50 by this much
MAX_SSE_P99_MS = 5.0
MAX_IMPORT_MS = 120.0


@dataclass(frozen=True)
class Check:
    label: str
    measured: str
    target: str
    ok: bool


def checks(health: HealthResult, sse: SseResult, imports: ImportResult) -> list[Check]:
    ratio = health.throughput_ratio()
    out = [Check(f"edge ÷ nginx req/s ({health.connections} conns)", f"{ratio:.2f}",
                 f"≥ {MIN_THROUGHPUT_RATIO:.2f}", ratio >= MIN_THROUGHPUT_RATIO)]
    for runs, label in ((health.single, "1 conn"),
                        (health.loaded, f"{health.connections} conns")):
        extra = health.added_p50(runs, "edge") - health.added_p50(runs, "nginx")
        out.append(Check(f"edge added p50 - nginx added p50 ({label})", f"{extra:+.2f} ms",
                         f"≤ +{MAX_EXTRA_P50_MS:.2f} ms", extra <= MAX_EXTRA_P50_MS))
    sse_p99 = sse.p("edge", 99)
    out.append(Check("SSE edge added p99", f"{sse_p99:.2f} ms", f"≤ {MAX_SSE_P99_MS:.1f} ms",
                     sse_p99 <= MAX_SSE_P99_MS and sse.lost["edge"] == 0))
    out.append(Check("import edge.app (CPU)", f"{imports.ms:.0f} ms", f"≤ {MAX_IMPORT_MS:.0f} ms",
                     imports.ms <= MAX_IMPORT_MS))
    return out


def render(header: str, health: HealthResult, sse: SseResult, imports: ImportResult,
           results: list[Check]) -> str:
    c = health.connections
    lines = [header, ""]
    lines.append(f"{'GET /global/health (median of rounds)':<40}"
                 + "".join(f"{name:>16}" for name in ORDER))

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"  {label:<38}" + "".join(f"{cell:>16}" for cell in cells))

    row(f"req/s, {c} conns",
        [f"{health.median_of(health.loaded, n, 'rps'):,.0f}" for n in ORDER])
    row(f"proxy CPU us/request, {c} conns",
        ["-"] + [f"{health.median_of(health.loaded, n, 'cpu_us'):,.0f}" for n in ORDER[1:]])
    for runs, label in ((health.loaded, f"{c} conns"), (health.single, "1 conn")):
        row(f"p50 / p99 ms, {label}",
            [f"{health.median_of(runs, n, 'p50_ms'):.2f} / "
             f"{health.median_of(runs, n, 'p99_ms'):.2f}" for n in ORDER])
        row(f"added p50 vs direct ms, {label}",
            ["-"] + [f"{health.added_p50(runs, n):+.2f}" for n in ORDER[1:]])
    if health.failed():
        row("failed requests (all runs)", [str(sum(r.failed for runs in
                                                   (health.loaded, health.single)
                                                   for r in runs[n])) for n in ORDER])
    lines.append("")
    lines.append(f"{f'SSE /global/event ({sse.events} events)':<40}"
                 + "".join(f"{name:>16}" for name in ORDER))
    row("added p50 / p99 ms vs direct",
        ["-"] + [f"{sse.p(n, 50):.2f} / {sse.p(n, 99):.2f}" for n in ORDER[1:]])
    row("events lost", [str(sse.lost[n]) for n in ORDER])
    lines.append("")
    heaviest = ", ".join(f"{name} {ms:.0f}" for name, ms in imports.heaviest)
    lines.append(f"import edge.app (fresh interpreter - bare, median of {imports.runs}): "
                 f"{imports.ms:.0f} ms CPU, {imports.wall_ms:.0f} ms wall")
    lines.append(f"  heaviest imports, cumulative ms: {heaviest}")
    lines.append("")
    lines.append(f"{'Target':<48}{'measured':>12}{'target':>14}  result")
    for check in results:
        lines.append(f"  {check.label:<46}{check.measured:>12}{check.target:>14}  "
                     f"{'PASS' if check.ok else 'MISS'}")
    return "\n".join(lines)
