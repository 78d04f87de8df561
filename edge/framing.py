"""Anti-framing on every answer: no other site may put the edge's pages (or
opencode's) in a frame and trick a click out of the user.

``X-Frame-Options: DENY`` for older browsers, and CSP ``frame-ancestors 'none'``
merged into each Content-Security-Policy opencode sends (its other directives stay
as they are; an own ``frame-ancestors`` is replaced), or sent alone if it sends none.
"""

from __future__ import annotations

from edge.types import ASGIApp, Message, Receive, Scope, Send

_DENY = b"frame-ancestors 'none'"


def merge_policy(policy: bytes) -> bytes:
    """``policy`` with its frame-ancestors directive set to 'none'."""
    kept = [d.strip() for d in policy.split(b";")
            if d.strip() and d.strip().split(None, 1)[0].lower() != b"frame-ancestors"]
    return b"; ".join([*kept, _DENY])


def no_framing(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Response headers with the anti-framing headers set."""
    out: list[tuple[bytes, bytes]] = []
    had_policy = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"x-frame-options":
            continue
        if lname == b"content-security-policy":
            had_policy = True
            value = merge_policy(value)
        out.append((name, value))
    if not had_policy:
        out.append((b"content-security-policy", _DENY))
    out.append((b"x-frame-options", b"DENY"))
    return out


class NoFraming:
    """Adds the anti-framing headers to every HTTP response of the layers inside."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": no_framing(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_framed)
