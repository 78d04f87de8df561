"""Many open event streams through the edge: its memory, and that none is dropped.

``count`` subscribers to ``/global/event`` (the bare asyncio protocol of
``bench.sse``) are opened through the edge and held for ``hold`` seconds while
the edge's resident memory (``VmRSS``) is sampled; then one marked toast is
posted to opencode directly, and every subscriber must still be open and see it.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from dataclasses import dataclass

from bench.sse import _post_toast, _Subscriber
from bench.stack import BenchError, Target


@dataclass(frozen=True)
class StreamsResult:
    count: int
    hold: float
    rss_before_mb: float
    rss_peak_mb: float
    dropped: int  # closed or failed before the end, or never saw the final event


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (VmRSS), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


async def measure_streams(edge: Target, direct: Target, count: int, hold: float) -> StreamsResult:
    loop = asyncio.get_running_loop()
    pid = edge.pids[0]
    before = rss_mb(pid)
    subscribers: list[_Subscriber] = []
    try:
        for _ in range(count):
            _, subscriber = await loop.create_connection(
                functools.partial(_Subscriber, edge), "127.0.0.1", edge.port)
            subscribers.append(subscriber)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(s.first_event.wait() for s in subscribers)), 60)
        except TimeoutError:
            waiting = sum(1 for s in subscribers if not s.first_event.is_set())
            raise BenchError(f"{waiting} of {count} event streams through the edge "
                             "saw no first event within 60 s") from None
        peak = rss_mb(pid)
        started = time.monotonic()
        while time.monotonic() - started < hold:
            await asyncio.sleep(min(1.0, hold))
            peak = max(peak, rss_mb(pid))
        marker = f"ocbench-{secrets.token_hex(4)}-0"
        reader, writer = await asyncio.open_connection("127.0.0.1", direct.port)
        try:
            await _post_toast(reader, writer, direct, marker)
        finally:
            writer.close()
            await writer.wait_closed()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                marker in s.arrivals or s.failure for s in subscribers):
            await asyncio.sleep(0.05)
        peak = max(peak, rss_mb(pid))
        dropped = sum(1 for s in subscribers if s.failure or marker not in s.arrivals)
    finally:
        for subscriber in subscribers:
            subscriber.close()
    return StreamsResult(count, hold, before, peak, dropped)
