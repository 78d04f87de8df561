"""GET /global/health through each target, in interleaved rounds."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.load import LoadGenerator, LoadResult
from bench.stack import Target
from bench.stats import median

PATH = "/global/health"
ORDER = ("direct", "edge", "nginx")


@dataclass
class HealthResult:
    """Every round's result per target, at the loaded and the single connection count."""

    connections: int
    rounds: int
    duration: float
    loaded: dict[str, list[LoadResult]] = field(default_factory=dict)
    single: dict[str, list[LoadResult]] = field(default_factory=dict)

    def median_of(self, runs: Mapping[str, Sequence[LoadResult]], name: str,
                  metric: str) -> float:
        return median([getattr(r, metric) for r in runs[name]])

    def throughput_ratio(self, runs: Mapping[str, Sequence[LoadResult]]) -> float:
        """Median over rounds of edge req/s ÷ nginx req/s measured in the same round."""
        return median([e.rps / n.rps for e, n in zip(runs["edge"], runs["nginx"], strict=True)])

    def added_p50(self, runs: Mapping[str, Sequence[LoadResult]], name: str) -> float:
        """Median over rounds of (target p50 - direct p50), in ms."""
        return median([t.p50_ms - d.p50_ms for t, d in zip(runs[name], runs["direct"],
                                                            strict=True)])

    def failed(self) -> int:
        return sum(r.failed for runs in (self.loaded, self.single) for rs in runs.values()
                   for r in rs)


def measure_health(targets: Mapping[str, Target], load: LoadGenerator, rounds: int,
                   duration: float, connections: int) -> HealthResult:
    result = HealthResult(connections, rounds, duration,
                          loaded={n: [] for n in ORDER}, single={n: [] for n in ORDER})
    for name in ORDER:  # warm-up: pools, keep-alive connections, opencode's JIT
        load.run(targets[name], PATH, connections, min(duration, 1.0))
    for n in range(rounds):
        order = ORDER[n % len(ORDER):] + ORDER[:n % len(ORDER)]
        for name in order:
            result.loaded[name].append(load.run(targets[name], PATH, connections, duration))
        for name in order:
            result.single[name].append(load.run(targets[name], PATH, 1, duration))
        summary = "  ".join(f"{name} {result.loaded[name][-1].rps:,.0f}/s" for name in ORDER)
        print(f"  round {n + 1}/{rounds}: {summary}", file=sys.stderr, flush=True)
    return result
