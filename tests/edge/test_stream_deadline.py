"""Event streams on the streaming front door end cleanly before Lambda's deadline and
when the container goes silent: the layer on its own with a streaming ASGI app, and
the composed edge under uvicorn forwarding a real upstream's event stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.stream_deadline import LAMBDA_CONTEXT, StreamDeadline, invocation_deadline
from edge.types import Message, Receive, Scope, Send
from tests.support.capture import CaptureServer, attach_upstream, running_capture
from tests.support.edge import EdgeServer, make_settings, running_edge


def lambda_context(deadline: float) -> bytes:
    """The header Lambda Web Adapter adds: the invocation's context, deadline in ms."""
    return json.dumps({"request_id": "r-1", "deadline": int(deadline * 1000),
                       "invoked_function_arn": "arn:aws:lambda:us-east-1:1:function:f",
                       "env_config": {"function_name": "f", "memory": 512}}).encode()


class EventSource:
    """A container's event stream: one event every ``interval`` seconds (``silent_after``
    events, then nothing) until the client is gone, as opencode's /global/event does."""

    def __init__(self, interval: float = 0.05, silent_after: int | None = None) -> None:
        self.interval = interval
        self.silent_after = silent_after
        self.scope: Scope | None = None
        self.saw_disconnect = False
        self.sent_after_end = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})

        async def pump() -> None:
            n = 0
            while True:
                if self.silent_after is None or n < self.silent_after:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": f"data: {n}\n\n".encode()})
                n += 1
                await asyncio.sleep(self.interval)

        pumping = asyncio.ensure_future(pump())
        while (await receive())["type"] != "http.disconnect":
            pass
        self.saw_disconnect = True
        pumping.cancel()
        # A late chunk after the client is gone must go nowhere.
        await send({"type": "http.response.body", "body": b"data: late\n\n", "more_body": True})


def call(app: Any, headers: list[tuple[bytes, bytes]],
         timeout: float = 5.0) -> tuple[list[Message], float]:
    """One request through ``app``; the messages the client got and how long it took."""
    sent: list[Message] = []
    scope = {"type": "http", "method": "GET", "path": "/global/event", "headers": headers}

    async def receive() -> Message:
        await asyncio.sleep(3600)  # the client never leaves by itself
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout))
    return sent, time.monotonic() - started


def test_a_stream_ends_cleanly_margin_seconds_before_the_invocation_deadline() -> None:
    upstream = EventSource()
    layer = StreamDeadline(upstream, margin=1.0, silence=30)
    deadline = time.time() + 1.6
    sent, took = call(layer, [(b"accept", b"text/event-stream"),
                              (LAMBDA_CONTEXT, lambda_context(deadline))])
    assert 0.5 < took < 1.5
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    events = [m["body"] for m in sent[1:-1]]
    assert len(events) >= 5 and all(e.startswith(b"data: ") for e in events)
    assert b"data: late\n\n" not in events  # nothing after the end
    # The forwarding app was told the client left, so it let go of the container.
    assert upstream.saw_disconnect
    # The context header describes the function: it never goes on to the container.
    assert upstream.scope is not None
    assert LAMBDA_CONTEXT not in {name for name, _ in upstream.scope["headers"]}


def test_a_stream_whose_container_goes_silent_ends_without_waiting_for_the_deadline() -> None:
    upstream = EventSource(silent_after=2)
    layer = StreamDeadline(upstream, margin=1.0, silence=0.4)
    sent, took = call(layer, [(LAMBDA_CONTEXT, lambda_context(time.time() + 600))])
    assert took < 1.5
    assert [m["body"] for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b""]
    assert upstream.saw_disconnect


def test_without_a_lambda_context_nothing_is_watched() -> None:
    upstream = EventSource(silent_after=1)
    layer = StreamDeadline(upstream, margin=1.0, silence=0.1)
    with pytest.raises(TimeoutError):
        call(layer, [(b"accept", b"text/event-stream")], timeout=0.6)
    assert not upstream.saw_disconnect


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"deadline": "soon"}',
                                   b'{"deadline": true}', b'{"deadline": 1}', b"{}",
                                   b'{"deadline": 1e400}', b"x" * 10_000])
def test_a_context_header_that_makes_no_sense_is_ignored_not_an_error(value: bytes) -> None:
    scope: Scope = {"type": "http", "headers": [(LAMBDA_CONTEXT, value)]}
    assert invocation_deadline(scope) is None


def test_other_responses_are_left_alone() -> None:
    async def json_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await asyncio.sleep(0.3)  # past the (already passed) deadline
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    sent, _ = call(StreamDeadline(json_answer, margin=10, silence=0.05),
                   [(LAMBDA_CONTEXT, lambda_context(time.time() + 1))])
    assert [m.get("body") for m in sent] == [None, b"{}"]


# -- through the edge -------------------------------------------------------------------


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with running_capture() as server:
        yield server


@pytest.fixture
def edge(state_dir: Path, capture: CaptureServer) -> Iterator[EdgeServer]:
    with running_edge(make_settings(state_dir)) as server:
        attach_upstream(server, capture.port)
        yield server


def test_the_edge_ends_a_forwarded_event_stream_before_the_invocation_ends(
        edge: EdgeServer, capture: CaptureServer) -> None:
    key = edge.create_key("stream")
    # As Lambda Web Adapter sends it: 11.5 s left, so the edge ends the stream after 1.5.
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream",
               "x-amzn-lambda-context": lambda_context(time.time() + 11.5).decode()}
    started = time.monotonic()
    events = 0
    with httpx.stream("GET", f"{edge.url}/global/event?tag=deadline&count=10000&interval=0.1",
                      headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():  # a clean end: no exception
            events += line.startswith("data:")
            if time.monotonic() - started > 8:
                break  # never ended by the edge
    took = time.monotonic() - started
    assert 1.0 < took < 5.0, took
    assert events >= 5
    # The upstream stream was released too, not left running to the deadline.
    assert capture.wait_for(lambda: capture.sse_outcomes.get("deadline") == "cancelled")
    assert capture.last("/global/event").header("x-amzn-lambda-context") is None
