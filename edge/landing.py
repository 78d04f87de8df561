"""Landing in the workspace: a browser's first navigation of the edge's root opens the
workspace project, ready to prompt, instead of opencode's empty "Add project" home.

How the opencode UI (1.18.33) picks a project: its home page lists the projects this
*browser* opened before (its own local storage), never the server's working directory,
so starting opencode in the workspace (it already is: its cwd) does not land anyone
there. A project is opened by the route ``/<base64url(directory)>/session``, the
directory encoded as UTF-8, base64 with ``-``/``_`` and no padding (``base64Encode``
in opencode's packages/util/src/encode.ts).

So the edge answers the first navigation of ``/`` (no query) with a tiny page that asks
opencode itself where its project is (``GET /path``, the server API's documented
endpoint, whose ``directory`` is the instance's working directory: the workspace) and
replaces itself with that project's route. Why this survives opencode upgrades best:
the edge knows no path (on AWS the edge never sees the container's disk), the project
directory comes from opencode's own stable API, and the one UI detail relied on — the
project route — is what every link into the UI uses, checked by the end-to-end test on
each pinned version. A cookie for the browser session marks the landing done, so
opening ``/`` again (or "Home" after a reload) shows opencode's home page as before.
"""

from __future__ import annotations

import time

from edge import pages
from edge.request import header_values, is_navigation, is_secure
from edge.types import ASGIApp, Receive, Scope, Send
from infra.interfaces import Status
from infra.lifecycle import Lifecycle
from infra.settings import Settings

LANDED_COOKIE = "ocedge_landed"


class Landing:
    """Sends a browser's first navigation of ``/`` to the workspace project; passes
    everything else to ``app``. A sleeping workspace is woken first, as the proxy
    would (the same lifecycle, one start); one not up within ``wake_wait`` gets the
    waking page, which reloads ``/`` once it runs — and lands then."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle, settings: Settings) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/"
                and not scope.get("query_string") and is_navigation(scope)
                and not _landed(scope)):
            await self.app(scope, receive, send)
            return
        current = await self.lifecycle.state.get()
        if current.status != Status.RUNNING:
            current = await self.lifecycle.wake(self.settings.wake_wait)
        if current.status != Status.RUNNING:
            await pages.waking_response(current, time.time())(scope, receive, send)
            return
        secure = is_secure(scope, self.settings.cookie_secure, self.settings.trust_forwarded)
        cookie = f"{LANDED_COOKIE}=1; Path=/; HttpOnly; SameSite=Lax"
        response = pages.landing_page()
        response.raw_headers.append(
            (b"set-cookie", (cookie + ("; Secure" if secure else "")).encode()))
        await response(scope, receive, send)


def _landed(scope: Scope) -> bool:
    return any(part.strip() == f"{LANDED_COOKIE}=1".encode()
               for value in header_values(scope, b"cookie") for part in value.split(b";"))
