"""Event-stream latency: the same opencode events seen direct, through the edge and nginx.

Subscribers are bare asyncio protocols (no HTTP client library between the socket
and the clock): ``data_received`` timestamps the bytes first, then decodes the
chunked body and splits it into events. Events are produced by posting
``/tui/show-toast`` straight to opencode; each toast carries a unique marker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.stack import BenchError, Target
from bench.stats import percentile

_MARKER = re.compile(rb'"message":"(ocbench-[0-9a-f]+-\d+)"')


class _Subscriber(asyncio.Protocol):
    """One GET /global/event; records when each marked event arrived."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.in_body = False
        self.chunked = False
        self.raw = bytearray()  # body bytes still chunk-framed
        self.body = bytearray()  # decoded body not yet split into events
        self.arrivals: dict[str, float] = {}
        self.first_event = asyncio.Event()
        self.failure: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            f"GET /global/event HTTP/1.1\r\nHost: 127.0.0.1:{self.target.port}\r\n"
            f"Authorization: {self.target.authorization}\r\nAccept: text/event-stream\r\n"
            "Cache-Control: no-cache\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self.head[:end]).lower(), bytes(self.head[end + 4:])
            self.in_body = True
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            status = head.split(b"\r\n", 1)[0]
            if b" 200" not in status:
                self._fail(f"{self.target.name} answered {status.decode(errors='replace')}")
                return
        if self.chunked:
            self.raw += data
            self._dechunk()
        else:
            self.body += data
        self._split_events(now)

    def _dechunk(self) -> None:
        while (line_end := self.raw.find(b"\r\n")) >= 0:
            size = int(bytes(self.raw[:line_end]).split(b";")[0], 16)
            start = line_end + 2
            if size == 0 or len(self.raw) < start + size + 2:
                return
            self.body += self.raw[start:start + size]
            del self.raw[:start + size + 2]

    def _split_events(self, now: float) -> None:
        while (end := self.body.find(b"\n\n")) >= 0:
            event = bytes(self.body[:end])
            del self.body[:end + 2]
            self.first_event.set()
            if match := _MARKER.search(event):
                self.arrivals.setdefault(match.group(1).decode(), now)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.first_event.set()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None and not self.first_event.is_set():
            self._fail(f"{self.target.name} closed the event stream: {exc}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True)
class SseResult:
    events: int  # markers posted
    added_ms: Mapping[str, Sequence[float]]  # per proxied target: arrival - direct arrival
    lost: Mapping[str, int]  # events a subscriber never saw

    def p(self, name: str, q: float) -> float:
        return percentile(self.added_ms[name], q)


async def _post_toast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      target: Target, message: str) -> None:
    body = json.dumps({"message": message, "variant": "info", "duration": 1}).encode()
    writer.write(
        f"POST /tui/show-toast HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
        f"Authorization: {target.authorization}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if not head.startswith(b"http/1.1 200"):
        raise BenchError(f"POST /tui/show-toast answered {head.splitlines()[0]!r}")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head)
    if length is None:
        raise BenchError("POST /tui/show-toast answered without a Content-Length")
    await reader.readexactly(int(length.group(1)))


async def measure_sse(targets: Mapping[str, Target], events: int, interval: float = 0.012,
                      warmup: int = 10) -> SseResult:
    """Subscribe through every target at once, post ``events`` toasts, compare arrivals."""
    loop = asyncio.get_running_loop()
    subscribers: dict[str, _Subscriber] = {}
    try:
        for name, target in targets.items():
            _, subscriber = await loop.create_connection(
                functools.partial(_Subscriber, target), "127.0.0.1", target.port)
            subscribers[name] = subscriber
        await asyncio.wait_for(
            asyncio.gather(*(s.first_event.wait() for s in subscribers.values())), 15)
        for subscriber in subscribers.values():
            if subscriber.failure:
                raise BenchError(subscriber.failure)

        direct = targets["direct"]
        run = secrets.token_hex(4)
        reader, writer = await asyncio.open_connection("127.0.0.1", direct.port)
        try:
            for n in range(-warmup, events):
                await _post_toast(reader, writer, direct, f"ocbench-{run}-{n}")
                await asyncio.sleep(interval)
        finally:
            writer.close()
            await writer.wait_closed()

        wanted = [f"ocbench-{run}-{n}" for n in range(events)]
        deadline = loop.time() + 5
        while loop.time() < deadline and not all(
                all(m in s.arrivals for m in wanted) for s in subscribers.values()):
            await asyncio.sleep(0.05)
    finally:
        for subscriber in subscribers.values():
            subscriber.close()

    base = subscribers["direct"].arrivals
    added: dict[str, list[float]] = {}
    lost: dict[str, int] = {}
    for name, subscriber in subscribers.items():
        lost[name] = sum(1 for m in wanted if m not in subscriber.arrivals)
        if name != "direct":
            added[name] = [(subscriber.arrivals[m] - base[m]) * 1000 for m in wanted
                           if m in base and m in subscriber.arrivals]
    return SseResult(events=events, added_ms=added, lost=lost)
