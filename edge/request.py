"""What a request's headers say about it: every question the edge asks of them.

Does it mean someone is using the workspace (activity) or is it an open tab's
background traffic? Is it a browser, a page navigation, an event stream? Does it
want HTML? Where does it come from, and did it arrive over HTTPS?

An open tab must neither keep the container awake nor wake it: the opencode UI
polls and re-opens its event stream by itself. Browsers tell their background
requests apart with Sec-Fetch-Mode; other clients (curl, SDKs, the opencode CLI)
send no Sec-Fetch-* headers and mean every request except an event stream.
"""

from __future__ import annotations

from enum import StrEnum

from edge.types import Scope

# Paths that only ever answer with an event stream (opencode's).
EVENT_STREAM_PATHS = frozenset({"/global/event", "/event"})


class Intent(StrEnum):
    ACTIVITY = "activity"  # wakes the container and renews its idle deadline
    BACKGROUND = "background"  # forwarded while it runs; never wakes, never renews


ACTIVITY = Intent.ACTIVITY
BACKGROUND = Intent.BACKGROUND


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    """The first value of header ``wanted`` (lower-case, as ASGI servers pass names)."""
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def intent(scope: Scope) -> Intent:
    """Activity or background, as the module docstring explains."""
    if scope["type"] == "websocket":
        # A (re)connecting terminal socket is the page's own doing; what is typed
        # into it is activity and is counted message by message.
        return BACKGROUND
    if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
        return ACTIVITY
    fetch_mode = _header(scope, b"sec-fetch-mode")
    if fetch_mode is not None:
        return ACTIVITY if fetch_mode == b"navigate" else BACKGROUND
    if scope["method"] == "OPTIONS":
        return BACKGROUND
    return BACKGROUND if accepts_event_stream(scope) else ACTIVITY


def is_navigation(scope: Scope) -> bool:
    """A browser loading a page (so it can be shown the waking page)."""
    return _header(scope, b"sec-fetch-mode") == b"navigate"


def is_browser(scope: Scope) -> bool:
    """Sent by a browser (which gets the session cookie), not curl or an SDK."""
    for name, value in scope["headers"]:
        if name.startswith(b"sec-fetch-"):
            return True
        if name == b"user-agent" and value.startswith(b"Mozilla/"):
            return True
    return False


def accepts_event_stream(scope: Scope) -> bool:
    """Any Accept header of the request names text/event-stream."""
    return any(name == b"accept" and b"text/event-stream" in value
               for name, value in scope["headers"])


def wants_event_stream(scope: Scope) -> bool:
    """Asks for an event stream, by its Accept header or by an event-stream-only path."""
    return scope["path"] in EVENT_STREAM_PATHS or accepts_event_stream(scope)


def wants_html(scope: Scope) -> bool:
    """The (first) Accept header names text/html: a person reads the answer."""
    accept = _header(scope, b"accept")
    return accept is not None and b"text/html" in accept


def client_address(scope: Scope, trust_forwarded: bool) -> str:
    """The client's address: the socket's, or X-Forwarded-For's first hop when the
    edge sits behind a proxy it trusts."""
    if trust_forwarded:
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded is not None:
            return forwarded.split(b",")[0].strip().decode("latin-1")
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def is_secure(scope: Scope, cookie_secure: str, trust_forwarded: bool) -> bool:
    """Whether the client reached the edge over HTTPS (so cookies get ``Secure``).

    ``cookie_secure`` is the setting: "true", "false" or "auto" (from the scheme,
    or a trusted X-Forwarded-Proto)."""
    if cookie_secure != "auto":
        return cookie_secure == "true"
    if scope.get("scheme") in ("https", "wss"):
        return True
    if trust_forwarded:
        proto = _header(scope, b"x-forwarded-proto")
        if proto is not None:
            return proto.strip().lower() == b"https"
    return False
