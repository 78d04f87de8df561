"""What the agent does while you are away, turned into notices (:mod:`infra.notify`).

The keep-alive watcher (:mod:`container.watcher`) hands every event of opencode's
``/global/event`` stream to :meth:`Notices.event`. Three things make a notice:

- a run ends (``session.status`` busy → idle) after lasting at least
  ``OCEDGE_NOTIFY_MIN_RUN`` seconds: *finished*;
- a run ends in an error (``session.error``; a run you stopped yourself,
  ``MessageAbortedError``, does not count): *failed*, with the error's type only;
- the agent asks you something (``permission.asked``, or the question tool's
  ``question.asked``): *waiting*, which also says how long the workspace stays awake.

Event shapes as opencode 1.18.33 sends them (each wrapped as ``{"directory", "payload":
{"type", "properties"}}``): ``session.status {sessionID, status: {type: busy|idle|retry}}``,
``session.idle {sessionID}``, ``session.error {sessionID?, error: {name, data}}``,
``permission.asked {id, sessionID, permission, patterns, …}``, ``permission.replied
{sessionID, requestID, reply}``, ``question.asked {id, sessionID, …}``,
``question.replied|rejected {sessionID, requestID}``, ``session.created|updated
{sessionID, info: {title, directory, parentID?}}``.

A session waiting for an answer stays ``busy`` in opencode for as long as nobody answers,
which would keep the workspace awake all night for a question you never saw. So an
open question holds the workspace awake for ``OCEDGE_PERMISSION_HOLD`` idle periods
(at least one) from when it was asked; after that the session is *parked*
(:meth:`Notices.parked`): the watcher no longer counts it as working and the idle
deadline runs out as usual. Nothing of a message, a command or a secret is ever read
into a notice: only the session's title, its id and directory (for the link), and the
kind of permission asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from infra.interfaces import Backends
from infra.notify import (
    FAILED,
    FINISHED,
    WAITING,
    Notice,
    Notifier,
    configured_channels,
    session_link,
    ui_base,
)
from infra.settings import Settings

log = logging.getLogger("ocedge.notices")

_QUESTIONS = ("permission.asked", "question.asked")
_ANSWERS = ("permission.replied", "question.replied", "question.rejected")
# The user stopped the run: nothing to tell them.
_NOT_FAILURES = ("MessageAbortedError",)


@dataclass
class _Session:
    title: str = ""
    directory: str = ""
    parent: str | None = None


@dataclass
class _Question:
    session: str
    asked: float


class Notices:
    """Follows opencode's events for notices, and holds the workspace awake (for a
    while) when the agent waits for an answer."""

    def __init__(self, notifier: Notifier, ui_base: str | None, api_url: str, auth: httpx.Auth,
                 min_run: float, idle_timeout: float, hold_periods: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.notifier = notifier
        self.ui_base = ui_base
        self.api_url = api_url
        self.auth = auth
        self.min_run = min_run
        # An open question holds the workspace for `hold` seconds, then the idle deadline
        # (renewed while the session was busy) runs out one idle period later.
        self.idle_timeout = idle_timeout
        self.hold = max(0.0, (max(1.0, hold_periods) - 1.0) * idle_timeout)
        self.clock = clock
        self.sessions: dict[str, _Session] = {}
        self.runs: dict[str, float] = {}  # session → when its run began
        self.errors: dict[str, str] = {}  # session → the type of the error its run hit
        self.questions: dict[str, _Question] = {}  # request id → its question
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the hold -------------------------------------------------------------------

    def parked(self) -> set[str]:
        """Sessions that only wait for an answer, and have been held long enough."""
        now = self.clock()
        waiting: dict[str, float] = {}
        for question in self.questions.values():
            waiting[question.session] = max(waiting.get(question.session, 0.0), question.asked)
        return {session for session, asked in waiting.items() if now - asked >= self.hold}

    # -- events ---------------------------------------------------------------------

    async def event(self, data: dict[str, Any]) -> None:
        """One event of ``/global/event`` (as the watcher received it)."""
        payload = data.get("payload") if isinstance(data.get("payload"), dict) else data
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        props = payload.get("properties")
        props = props if isinstance(props, dict) else {}
        session = str(props.get("sessionID") or "")
        if kind in ("session.created", "session.updated") and isinstance(props.get("info"), dict):
            self._remember(props["info"])
        elif kind == "session.status" and session:
            status = props.get("status")
            state = str(status.get("type", "")) if isinstance(status, dict) else str(status)
            if state in ("busy", "retry"):
                self.runs.setdefault(session, self.clock())
            elif state == "idle":
                await self._ended(session)
        elif kind == "session.idle" and session:
            await self._ended(session)
        elif kind == "session.error":
            await self._failed(session, props.get("error"))
        elif kind in _QUESTIONS and session and props.get("id"):
            await self._asked(str(props["id"]), session, str(props.get("permission") or ""))
        elif kind in _ANSWERS:
            self.questions.pop(str(props.get("requestID") or ""), None)
        elif kind == "server.connected":
            # A new connection: questions answered or asked meanwhile were missed.
            self._spawn(self._resync())

    def _remember(self, info: dict[str, Any]) -> None:
        if not info.get("id"):
            return
        self.sessions[str(info["id"])] = _Session(
            title=str(info.get("title") or ""), directory=str(info.get("directory") or ""),
            parent=str(info["parentID"]) if info.get("parentID") else None)

    async def _ended(self, session: str) -> None:
        began = self.runs.pop(session, None)
        error = self.errors.pop(session, None)
        if began is None:
            return  # a second idle for the same run, or a run we never saw begin
        lasted = self.clock() - began
        if error in _NOT_FAILURES:
            return  # stopped by the user, who is there to see it
        if error is not None:
            await self._notify(FAILED, session, f"The run stopped with an error ({error}) "
                               f"after {_duration(lasted)}.")
        elif lasted >= self.min_run:
            await self._notify(FINISHED, session, f"The run took {_duration(lasted)}.")

    async def _failed(self, session: str, error: Any) -> None:
        name = str(error.get("name") or "error") if isinstance(error, dict) else "error"
        if not session:
            return
        if session in self.runs:
            self.errors[session] = name  # told when the run ends
        elif name not in _NOT_FAILURES:
            await self._notify(FAILED, session, f"The session stopped with an error ({name}).")

    async def _asked(self, request: str, session: str, permission: str) -> None:
        if request in self.questions:
            return
        self.questions[request] = _Question(session, self.clock())
        what = f"Permission asked to use {permission}." if permission else "A question was asked."
        await self._notify(WAITING, session, what, awake_for=self.hold + self.idle_timeout)

    # -- sending --------------------------------------------------------------------

    async def _notify(self, kind: str, session: str, detail: str,
                      awake_for: float | None = None) -> None:
        # Off the event stream: reading a session's title must not hold up the watcher.
        self._spawn(self._send(kind, session, detail, awake_for, self.clock()))

    async def _send(self, kind: str, session: str, detail: str, awake_for: float | None,
                    at: float) -> None:
        info = await self._session(session)
        # A subagent's session: tell about the session the user started.
        root, seen = session, 0
        while info.parent and seen < 5:
            root, seen = info.parent, seen + 1
            info = await self._session(root)
        if kind == FINISHED and root != session:
            return  # a subagent's run ends inside its parent's run: the parent tells
        link = self.ui_base
        if self.ui_base and info.directory:
            link = session_link(self.ui_base, info.directory, root)
        self.notifier.send(Notice(kind, root, info.title or "(untitled session)", link,
                                  detail=detail, awake_for=awake_for, at=at))

    async def _session(self, session: str) -> _Session:
        """What the events told of ``session``, else what opencode says (its title may
        have changed since; a session from before this container's start is unknown)."""
        known = self.sessions.get(session)
        if known is not None and known.title and known.directory:
            return known
        try:
            async with httpx.AsyncClient(auth=self.auth, trust_env=False, timeout=5) as client:
                response = await client.get(f"{self.api_url}/session/{session}")
            if response.is_success and isinstance(response.json(), dict):
                self._remember(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not read session %s for its notice (%s)", session,
                        type(exc).__name__)
        return self.sessions.get(session) or _Session()

    async def _resync(self) -> None:
        """Open questions as opencode has them now (after the event stream reconnected):
        the answered ones are forgotten, the ones asked meanwhile told."""
        started = self.clock()
        open_now: dict[str, tuple[str, str]] = {}
        try:
            async with httpx.AsyncClient(auth=self.auth, trust_env=False, timeout=5) as client:
                for path in ("/permission", "/question"):
                    response = await client.get(f"{self.api_url}{path}")
                    items = response.json() if response.is_success else []
                    for item in items if isinstance(items, list) else []:
                        if isinstance(item, dict) and item.get("id") and item.get("sessionID"):
                            open_now[str(item["id"])] = (str(item["sessionID"]),
                                                         str(item.get("permission") or ""))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not re-read the open questions (%s)", type(exc).__name__)
            return
        # Keep what was asked while we read; drop what was answered while we were away.
        self.questions = {request: question for request, question in self.questions.items()
                          if request in open_now or question.asked >= started}
        for request, (session, permission) in open_now.items():
            await self._asked(request, session, permission)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.notifier.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def notices_for(settings: Settings, backends: Backends, api_url: str,
                      auth: httpx.Auth) -> Notices:
    """The notices of this container: to the configured channels, linking to the edge's
    UI, about the opencode at ``api_url``."""
    targets = await configured_channels(settings, backends)
    return Notices(Notifier(targets), ui_base(settings), api_url, auth,
                   settings.notify_min_run, settings.idle_timeout, settings.permission_hold)
