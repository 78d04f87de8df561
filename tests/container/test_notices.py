"""Notices from opencode's events, and the hold an open question puts on sleep.

The events are shaped as opencode 1.18.33 sends them on /global/event (recorded from
the real server: see container/notices.py); tests/e2e/test_notices.py drives the real
one. Here the clock is the test's, so runs of minutes take no time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import httpx
import pytest

from container.notices import Notices
from container.watcher import IDLE, KeepAlive
from infra.deadline import Deadline
from infra.interfaces import Status
from infra.lifecycle import Lifecycle
from infra.net import free_port
from infra.notify import FAILED, FINISHED, WAITING, Notice, Notifier, session_link
from tests.support.memory import MemoryStateStore

pytestmark = pytest.mark.unit

UI = "https://edge.example.com"
DIRECTORY = "/srv/workspace"


class Recorder:
    """A channel that keeps what it is given."""

    name = "recorder"

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    async def deliver(self, notice: Notice) -> None:
        self.notices.append(notice)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def event(kind: str, **properties: Any) -> dict[str, Any]:
    return {"directory": DIRECTORY, "payload": {"type": kind, "properties": properties}}


def created(session: str, title: str, parent: str | None = None) -> dict[str, Any]:
    info = {"id": session, "title": title, "directory": DIRECTORY, "projectID": "global"}
    return event("session.created", sessionID=session,
                 info=info | ({"parentID": parent} if parent else {}))


def status(session: str, state: str) -> dict[str, Any]:
    return event("session.status", sessionID=session, status={"type": state})


def asked(request: str, session: str) -> dict[str, Any]:
    return event("permission.asked", id=request, sessionID=session, permission="bash",
                 patterns=["git push --force"], metadata={"command": "git push --force"},
                 always=["git push *"])


def make(clock: Clock, min_run: float = 30, idle: float = 600,
         hold: float = 1) -> tuple[Notices, Recorder]:
    recorder = Recorder()
    # Nothing answers at api_url: a session the events never described stays unknown.
    notices = Notices(Notifier([recorder]), UI, f"http://127.0.0.1:{free_port()}",
                      httpx.BasicAuth("opencode", "pw"), min_run, idle, hold, clock)
    return notices, recorder


async def feed(notices: Notices, *events: dict[str, Any]) -> None:
    for item in events:
        await notices.event(item)
    await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_long_run_ends_with_one_notice_linking_to_its_session() -> None:
    async def scenario() -> list[Notice]:
        clock = Clock()
        notices, recorder = make(clock)
        await feed(notices, created("ses_a", "Fix the parser"), status("ses_a", "busy"))
        clock.now += 45
        # opencode says idle twice (status, then session.idle): one notice.
        await feed(notices, status("ses_a", "idle"), event("session.idle", sessionID="ses_a"))
        await notices.close()
        return recorder.notices

    [notice] = asyncio.run(scenario())
    assert (notice.kind, notice.session, notice.title) == (FINISHED, "ses_a", "Fix the parser")
    assert notice.link == session_link(UI, DIRECTORY, "ses_a")
    assert notice.detail == "The run took 45 s."


def test_a_short_run_and_a_run_stopped_by_the_user_end_quietly() -> None:
    async def scenario() -> list[Notice]:
        clock = Clock()
        notices, recorder = make(clock)
        await feed(notices, created("ses_a", "Quick"), status("ses_a", "busy"))
        clock.now += 29
        await feed(notices, status("ses_a", "idle"), status("ses_a", "busy"))
        clock.now += 300
        await feed(notices, event("session.error", sessionID="ses_a",
                                  error={"name": "MessageAbortedError",
                                         "data": {"message": "Aborted"}}),
                   status("ses_a", "idle"))
        return recorder.notices

    assert asyncio.run(scenario()) == []


def test_a_failed_run_tells_the_error_type_never_its_message() -> None:
    async def scenario() -> list[Notice]:
        clock = Clock()
        notices, recorder = make(clock)
        await feed(notices, created("ses_a", "Deploy"), status("ses_a", "busy"))
        clock.now += 2  # however short
        await feed(notices, event("session.error", sessionID="ses_a", error={
            "name": "APIError", "data": {"message": "401: bad key sk-live-123 for user"}}),
            status("ses_a", "idle"))
        return recorder.notices

    [notice] = asyncio.run(scenario())
    assert notice.kind == FAILED and "APIError" in notice.detail
    assert "sk-live-123" not in notice.text and "401" not in notice.text


def test_a_permission_question_is_told_without_the_command_and_says_how_long_it_waits() -> None:
    async def scenario() -> list[Notice]:
        clock = Clock()
        notices, recorder = make(clock, idle=600, hold=2)
        await feed(notices, created("ses_a", "Release"), status("ses_a", "busy"),
                   asked("per_1", "ses_a"), asked("per_1", "ses_a"))
        return recorder.notices

    [notice] = asyncio.run(scenario())
    assert notice.kind == WAITING and notice.detail == "Permission asked to use bash."
    assert notice.awake_for == 1200  # two idle periods, as configured
    assert "at least 20 min" in notice.text and "git push" not in notice.text


def test_a_subagent_is_told_as_the_session_the_user_started() -> None:
    async def scenario() -> list[Notice]:
        clock = Clock()
        notices, recorder = make(clock)
        await feed(notices, created("ses_root", "Refactor"), created("ses_sub", "sub", "ses_root"),
                   status("ses_root", "busy"), status("ses_sub", "busy"))
        clock.now += 60
        await feed(notices, asked("per_9", "ses_sub"), status("ses_sub", "idle"))
        return recorder.notices

    [notice] = asyncio.run(scenario())  # the subagent's run end is the parent's to tell
    assert (notice.kind, notice.session, notice.title) == (WAITING, "ses_root", "Refactor")
    assert notice.link.endswith("/session/ses_root")


def test_a_session_the_events_never_described_still_gets_a_notice() -> None:
    async def scenario() -> list[Notice]:
        clock = Clock()
        notices, recorder = make(clock)
        await feed(notices, status("ses_old", "busy"))
        clock.now += 31
        await feed(notices, status("ses_old", "idle"))
        for _ in range(100):  # the lookup fails (nothing listens there)
            if recorder.notices:
                break
            await asyncio.sleep(0.02)
        return recorder.notices

    [notice] = asyncio.run(scenario())
    assert notice.title == "(untitled session)" and notice.link == UI


# -- the hold ------------------------------------------------------------------------------


def _keepalive(clock: Clock, notices: Notices | None) -> tuple[KeepAlive, MemoryStateStore]:
    store = MemoryStateStore()
    keepalive = KeepAlive("http://127.0.0.1:1", httpx.BasicAuth("opencode", "pw"),
                          Lifecycle(store, owner="container:test"), 0,
                          Deadline(store, 100, "container:test"), clock=clock, notices=notices)
    return keepalive, store


async def _run_until(keepalive: KeepAlive, store: MemoryStateStore, clock: Clock,
                     steps: list[float]) -> list[bool]:
    """Advance the clock to each of ``steps`` (seconds from now); whether the watcher
    found the workspace idle by then."""
    lifecycle = keepalive.lifecycle
    state = await lifecycle.register_running("127.0.0.1:1", "pw", None, 100)
    keepalive.generation = state.generation
    start = clock.now
    store.item = dataclasses.replace(store.item, deadline=start + 100)
    waiting = asyncio.ensure_future(keepalive.wait_until_idle(0.001))
    seen = []
    for step in steps:
        clock.now = start + step
        await asyncio.sleep(0.02)
        seen.append(waiting.done())
    if waiting.done():
        assert waiting.result() == IDLE
    waiting.cancel()
    return seen


@pytest.mark.parametrize("answered", [False, True])
def test_an_open_question_holds_sleep_for_its_idle_periods_then_lets_go(answered: bool) -> None:
    async def scenario() -> list[bool]:
        clock = Clock()
        notices, _ = make(clock, idle=100, hold=2)
        keepalive, store = _keepalive(clock, notices)
        await keepalive.handle(created("ses_a", "Release"))
        await keepalive.handle(status("ses_a", "busy"))
        await keepalive.handle(asked("per_1", "ses_a"))
        if answered:  # the agent works on: busy counts again, however long
            await keepalive.handle(event("permission.replied", sessionID="ses_a",
                                         requestID="per_1", reply="once"))
        seen = await _run_until(keepalive, store, clock, [50, 99, 150, 190, 205])
        assert store.item.status == Status.RUNNING
        return seen

    seen = asyncio.run(scenario())
    if answered:
        assert seen == [False] * 5
    else:
        # Held (busy renews the deadline) for one extra idle period, then one more
        # idle period counts down: asleep after two, as the notice said.
        assert seen == [False, False, False, False, True]
