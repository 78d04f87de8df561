"""``python -m bench``: see the package docstring for the method."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from bench.health import measure_health
from bench.imports import measure_import
from bench.lambda_link import lambda_checks, measure_entries, measure_link, render_lambda
from bench.load import LoadGenerator
from bench.profile import profile_during, render_profile
from bench.report import edge_checks, import_check, render
from bench.sse import measure_sse
from bench.stack import BenchError, Stack
from bench.streams import measure_streams
from bench.wake import measure_wake, render_wake, wake_check
from bench.workspace import (
    WorkspaceBenchError,
    measure_workspace,
    render_workspace,
    workspace_checks,
)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminated(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM and SIGHUP into an exception so every started process is still stopped.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds per target per round and load level (default 2)")
    parser.add_argument("--connections", type=int, default=16,
                        help="connections for the throughput runs (default 16)")
    parser.add_argument("--events", type=int, default=200, help="SSE events (default 200)")
    parser.add_argument("--import-runs", type=int, default=11,
                        help="fresh interpreters per side for the import time (default 11)")
    parser.add_argument("--workspace-files", type=int, default=1000,
                        help="4 KiB files for the S3 workspace comparison (default 1000)")
    parser.add_argument("--wake-rounds", type=int, default=3,
                        help="sleep/wake rounds for the wake time (default 3)")
    parser.add_argument("--streams", type=int, default=500,
                        help="event streams held open through the edge (default 500)")
    parser.add_argument("--stream-hold", type=float, default=60.0,
                        help="seconds the streams are held open (default 60)")
    parser.add_argument("--small", action="store_true",
                        help="a quick run of every part with tiny counts (the test suite's "
                             "check that the benchmark still works; its figures mean little)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.small:
        args.rounds, args.duration, args.events, args.import_runs = 1, 1.0, 20, 3
        args.workspace_files, args.wake_rounds, args.streams, args.stream_hold = 50, 1, 20, 2.0
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminated)

    started = time.monotonic()
    try:
        with Stack() as stack:
            _progress("starting the edge (it wakes its container) and nginx ...")
            stack.start_edge()
            stack.start_nginx()
            load = LoadGenerator(stack.root)
            version = stack.opencode_version()
            _progress(f"GET /global/health: {args.rounds} rounds x 3 targets x "
                      f"({args.connections} conns + 1 conn) x {args.duration:g} s ...")
            health = measure_health(stack.targets, load, args.rounds, args.duration,
                                    args.connections)
            _progress(f"SSE: {args.events} events through three subscribers at once ...")
            sse = asyncio.run(measure_sse(stack.targets, args.events))
            _progress(f"{args.streams} event streams through the edge for "
                      f"{args.stream_hold:g} s ...")
            streams = asyncio.run(measure_streams(stack.targets["edge"], stack.targets["direct"],
                                                  args.streams, args.stream_hold))
            results = edge_checks(health, sse, streams)
            profiles = []
            missed = {c.label for c in results if not c.ok}
            edge, seconds = stack.targets["edge"], max(args.duration, 3.0)
            for connections in (args.connections, 1):
                label = f"{connections} conn" + ("s" if connections > 1 else "")
                if not any(label in m or (connections > 1 and "SSE" in m) for m in missed):
                    continue
                _progress(f"a target at {label} was missed: profiling the edge under that load ...")
                sampled = profile_during(edge.pids[0], seconds, functools.partial(
                    load.run, edge, "/global/health", connections, seconds))
                profiles.append(render_profile(
                    f"Where the edge's CPU goes at {label}, GET /global/health (py-spy)", sampled))
            _progress(f"wake: {args.wake_rounds} rounds of sleep → first proxied 200, "
                      "beside a bare opencode start ...")
            wake = measure_wake(stack, args.wake_rounds)
            _progress("the pinned TLS link vs plain loopback ...")
            link = measure_link(stack.refresh_direct())
            edge_server = stack.edge_server
        # After everything is stopped, so the interpreters compete with nothing of ours.
        _progress("import time of edge.app ...")
        imports = measure_import(args.import_runs)
        _progress("Lambda entry modules: cold import and memory ...")
        entries = measure_entries()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    load_avg = os.getloadavg()[0]
    header = (f"opencode-edge bench · opencode {version} · edge: uvicorn ({edge_server}), "
              f"1 worker · nginx: 1 worker · load: {load.name} · {os.cpu_count()} CPUs, "
              f"load avg {load_avg:.2f} · {time.monotonic() - started:.0f} s")
    results.append(import_check(imports))
    print(render(header, health, sse, streams, imports, results), flush=True)
    for profile in profiles:
        print(profile, flush=True)
    print(render_wake(wake), flush=True)
    results.append(wake_check(wake))
    entry_results = lambda_checks(entries)
    print(render_lambda(entries, link, entry_results), flush=True)
    results += entry_results

    # The S3 workspace: its own moto server, mounts and container, after the rest.
    try:
        workspace = measure_workspace(args.workspace_files, sessions=20 if args.small else 300,
                                      wakes=args.wake_rounds, progress=_progress)
    except (WorkspaceBenchError, BenchError) as exc:
        print(f"bench: workspace: {exc}", file=sys.stderr)
        return 2
    workspace_results = workspace_checks(workspace)
    print()
    print(render_workspace(workspace, workspace_results))
    results += workspace_results
    return 1 if args.strict and not all(c.ok for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
