"""Sort requests by intent: does this request mean someone is using the workspace?

An open tab must neither keep the container awake nor wake it: the opencode UI
polls and re-opens its event stream by itself. Browsers tell their background
requests apart with Sec-Fetch-Mode; other clients (curl, SDKs, the opencode CLI)
send no Sec-Fetch-* headers and mean every request except an event stream.
"""

from __future__ import annotations

from edge.types import Scope

ACTIVITY = "activity"  # wakes the container and renews its idle deadline
BACKGROUND = "background"  # forwarded while it runs; never wakes, never renews


def classify(scope: Scope) -> str:
    if scope["type"] == "websocket":
        # A (re)connecting terminal socket is the page's own doing; what is typed
        # into it is activity and is counted message by message.
        return BACKGROUND
    if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
        return ACTIVITY
    fetch_mode: bytes | None = None
    event_stream = False
    for name, value in scope["headers"]:
        if name == b"sec-fetch-mode":
            fetch_mode = value
        elif name == b"accept" and b"text/event-stream" in value:
            event_stream = True
    if fetch_mode is not None:
        return ACTIVITY if fetch_mode == b"navigate" else BACKGROUND
    if scope["method"] == "OPTIONS":
        return BACKGROUND
    return BACKGROUND if event_stream else ACTIVITY


def is_navigation(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"sec-fetch-mode":
            return bool(value == b"navigate")
    return False
