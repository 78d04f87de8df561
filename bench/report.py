"""The table ``python -m bench`` prints: measurements, then targets with PASS/MISS."""

from __future__ import annotations

from dataclasses import dataclass

from bench.health import ORDER, HealthResult
from bench.imports import ImportResult
from bench.sse import SseResult
from bench.streams import StreamsResult

# Targets the edge is held to (issue 12).
MIN_THROUGHPUT_RATIO = 0.90  # edge req/s ÷ nginx req/s, at 16 connections and at 1
MAX_EXTRA_P50_MS = 0.3  # at 1 connection, edge added p50 may exceed nginx's by this much
MAX_SSE_P99_MS = 5.0
MAX_STREAMS_RSS_MB = 200.0
MAX_IMPORT_MS = 120.0


@dataclass(frozen=True)
class Check:
    label: str
    measured: str
    target: str
    ok: bool


def edge_checks(health: HealthResult, sse: SseResult, streams: StreamsResult) -> list[Check]:
    """The request path's targets: throughput, added latency, SSE, open streams."""
    out = []
    for runs, label in ((health.loaded, f"{health.connections} conns"),
                        (health.single, "1 conn")):
        ratio = health.throughput_ratio(runs)
        out.append(Check(f"edge ÷ nginx req/s ({label})", f"{ratio:.2f}",
                         f"≥ {MIN_THROUGHPUT_RATIO:.2f}", ratio >= MIN_THROUGHPUT_RATIO))
    extra = health.added_p50(health.single, "edge") - health.added_p50(health.single, "nginx")
    out.append(Check("edge added p50 - nginx added p50 (1 conn)", f"{extra:+.2f} ms",
                     f"≤ +{MAX_EXTRA_P50_MS:.2f} ms", extra <= MAX_EXTRA_P50_MS))
    sse_p99 = sse.p("edge", 99)
    out.append(Check("SSE edge added p99", f"{sse_p99:.2f} ms", f"≤ {MAX_SSE_P99_MS:.1f} ms",
                     sse_p99 <= MAX_SSE_P99_MS and sse.lost["edge"] == 0))
    out.append(Check(f"edge RSS, {streams.count} streams open {streams.hold:.0f} s",
                     f"{streams.rss_peak_mb:.0f} MB", f"≤ {MAX_STREAMS_RSS_MB:.0f} MB",
                     streams.rss_peak_mb <= MAX_STREAMS_RSS_MB))
    out.append(Check(f"streams dropped of {streams.count}", str(streams.dropped), "0",
                     streams.dropped == 0))
    return out


def import_check(imports: ImportResult) -> Check:
    return Check("import edge.app (CPU)", f"{imports.ms:.0f} ms", f"≤ {MAX_IMPORT_MS:.0f} ms",
                 imports.ms <= MAX_IMPORT_MS)


def render_checks(results: list[Check]) -> list[str]:
    lines = [f"{'Target':<48}{'measured':>12}{'target':>14}  result"]
    for check in results:
        lines.append(f"  {check.label:<46}{check.measured:>12}{check.target:>14}  "
                     f"{'PASS' if check.ok else 'MISS'}")
    return lines


def render(header: str, health: HealthResult, sse: SseResult, streams: StreamsResult,
           imports: ImportResult, results: list[Check]) -> str:
    c = health.connections
    lines = [header, ""]
    lines.append(f"{'GET /global/health (median of rounds)':<40}"
                 + "".join(f"{name:>16}" for name in ORDER))

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"  {label:<38}" + "".join(f"{cell:>16}" for cell in cells))

    row(f"req/s, {c} conns",
        [f"{health.median_of(health.loaded, n, 'rps'):,.0f}" for n in ORDER])
    row("req/s, 1 conn", [f"{health.median_of(health.single, n, 'rps'):,.0f}" for n in ORDER])
    for runs, label in ((health.loaded, f"{c} conns"), (health.single, "1 conn")):
        row(f"proxy CPU us/request, {label}",
            ["-"] + [f"{health.median_of(runs, n, 'cpu_us'):,.0f}" for n in ORDER[1:]])
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
    lines.append(f"{streams.count} event streams through the edge, held {streams.hold:.0f} s: "
                 f"edge RSS {streams.rss_before_mb:.0f} MB before, {streams.rss_peak_mb:.0f} MB "
                 f"peak; {streams.count - streams.dropped} still open and delivering")
    cpu = health.median_of(health.loaded, "edge", "cpu_us")
    lines.append(f"edge CPU per proxied request: {cpu:,.0f} µs at {c} conns, "
                 f"{health.median_of(health.single, 'edge', 'cpu_us'):,.0f} µs at 1 conn "
                 f"(nginx: {health.median_of(health.loaded, 'nginx', 'cpu_us'):,.0f} µs)")
    lines.append("")
    heaviest = ", ".join(f"{name} {ms:.0f}" for name, ms in imports.heaviest)
    lines.append(f"import edge.app (fresh interpreter - bare, median of {imports.runs}): "
                 f"{imports.ms:.0f} ms CPU, {imports.wall_ms:.0f} ms wall")
    lines.append(f"  heaviest imports, cumulative ms: {heaviest}")
    lines.append("")
    lines += render_checks(results)
    return "\n".join(lines)
