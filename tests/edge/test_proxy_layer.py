"""The proxy layer over the in-memory state store and compute: an open tab's
background traffic never wakes a sleeping container, activity does (and sees the
waking page or a 503 while it starts), an unreachable container gets a 502."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from edge.links import UpstreamLinks
from edge.proxy import Proxy
from edge.types import Message, Scope
from infra.deadline import Deadline
from infra.interfaces import Status
from infra.lifecycle import Lifecycle
from infra.settings import Settings
from tests.support.memory import MemoryCompute, MemoryStateStore

pytestmark = pytest.mark.unit


async def _call(proxy: Proxy, kind: str = "http", method: str = "GET",
                **headers: str) -> list[Message]:
    scope: Scope = {"type": kind, "method": method, "path": "/session", "query_string": b"",
                    "headers": [(n.replace("_", "-").encode(), v.encode())
                                for n, v in headers.items()],
                    "client": ("192.0.2.1", 4000), "scheme": "http"}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await proxy(scope, receive, send)
    return sent


def run(boot: float, wake_wait: float, *calls: dict[str, Any]
        ) -> tuple[list[list[Message]], MemoryStateStore, MemoryCompute]:
    """Make a proxy over a sleeping deployment and send it ``calls`` in turn."""
    state = MemoryStateStore()
    compute = MemoryCompute(state, boot=boot)

    async def go() -> list[list[Message]]:
        settings = Settings().with_overrides(wake_wait=wake_wait, upstream_connect_timeout=1.0)
        lifecycle = Lifecycle(state, compute, owner="edge:test", poll=0.01)
        links = UpstreamLinks(settings)
        proxy = Proxy(settings, state, lifecycle, links,
                      Deadline(state, settings.idle_timeout, writer="edge:test"))
        try:
            return [await _call(proxy, **call) for call in calls]
        finally:
            lifecycle.cancel()
            await links.aclose()

    return asyncio.run(go()), state, compute


def _status(sent: list[Message]) -> int:
    return int(next(m for m in sent if m["type"] == "http.response.start")["status"])


def _body(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_an_open_tabs_poll_and_socket_do_not_wake_a_sleeping_container() -> None:
    (poll, socket), state, compute = run(
        0.0, 0.5, {"sec_fetch_mode": "cors"}, {"kind": "websocket"})
    assert _status(poll) == 503
    assert json.loads(_body(poll))["error"] == "asleep"
    assert socket == [{"type": "websocket.close", "code": 1013}]
    assert compute.starts == 0 and state.item.status == Status.STOPPED


def test_a_navigation_wakes_it_and_sees_the_waking_page_while_it_starts() -> None:
    (page,), state, compute = run(5.0, 0.05, {"sec_fetch_mode": "navigate"})
    assert _status(page) == 503
    assert b"Starting your workspace" in _body(page)
    assert compute.starts == 1 and state.item.status == Status.STARTING


def test_an_api_call_that_outlasts_the_wake_wait_gets_a_503_to_retry() -> None:
    (call,), _, compute = run(5.0, 0.05, {"method": "POST"})
    assert _status(call) == 503
    assert json.loads(_body(call))["error"] == "waking"
    assert compute.starts == 1


def test_a_running_container_that_does_not_answer_gets_a_502() -> None:
    # The in-memory container registers 127.0.0.1:1, where nothing listens.
    (call,), state, compute = run(0.0, 2.0, {})
    assert _status(call) == 502
    assert json.loads(_body(call))["error"] == "upstream_unavailable"
    assert compute.starts == 1 and state.item.status == Status.RUNNING
