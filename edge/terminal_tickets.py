"""Signed terminal tickets: behind CloudFront, the tickets the edge hands out are the
only ones the container's terminal listener takes.

The opencode UI asks for a ticket with ``POST /pty/{id}/connect-token`` (through the
edge: logged in, from the edge's own page) and opens the terminal's WebSocket with it,
which CloudFront sends straight to the container. opencode reads that request's
location (``directory``) before it checks the ticket, and loads a project for any
directory named — so the listener must know a ticket came from here before opencode
sees the request. This layer signs the ticket in opencode's answer with the origin
secret, bound to the terminal, the location it was asked for and an expiry
(infra/cloudfront.py); the browser uses it as it is.

Only the ticket answer is held and rewritten (a few dozen bytes of JSON; asked for
without compression); every other request passes untouched.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl

from edge.types import ASGIApp, Message, Receive, Scope, Send
from infra.cloudfront import TICKET_PATH, location_of, sign_ticket

log = logging.getLogger("ocedge.edge")

# A ticket answer larger than this is not opencode's: it passes on unsigned.
_MAX_ANSWER = 16 * 1024


class TerminalTickets:
    """Signs the ticket in each answer to ``POST /pty/{id}/connect-token``."""

    def __init__(self, app: ASGIApp, origin_secret: str) -> None:
        self.app = app
        self.origin_secret = origin_secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = TICKET_PATH.fullmatch(scope["path"]) if scope["type"] == "http" \
            and scope["method"] == "POST" else None
        # Only the very target opencode routes as the ticket endpoint: the proxy sends
        # the raw path on, so a percent-encoded one (/pty/p1%2Fconnect-token) is not it.
        raw = scope.get("raw_path")
        if found is not None and raw is not None and raw != scope["path"].encode("latin-1"):
            found = None
        if found is None:
            await self.app(scope, receive, send)
            return
        pty = found.group(1)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        location = location_of(query)
        # An answer in plain JSON, so it can be read and rewritten.
        scope = dict(scope)
        scope["headers"] = [(n, v) for n, v in scope["headers"] if n != b"accept-encoding"]
        held: list[Message] = []
        size = 0
        passing = False  # the answer was let go: the rest passes as it comes

        async def sign(message: Message) -> None:
            nonlocal size, passing
            if passing or message["type"] not in ("http.response.start", "http.response.body"):
                await send(message)
                return
            held.append(message)
            size += len(message.get("body", b""))
            if message["type"] == "http.response.start":
                return
            if message.get("more_body") and size <= _MAX_ANSWER:
                return
            passing = True
            for out in self._signed(held, pty, location):
                await send(out)

        await self.app(scope, receive, sign)

    def _signed(self, held: list[Message], pty: str,
                location: list[tuple[str, str]]) -> list[Message]:
        """The held answer, its ticket signed when it is opencode's ticket answer."""
        start, bodies = held[0], held[1:]
        body = b"".join(m.get("body", b"") for m in bodies)
        more = bool(bodies[-1].get("more_body")) if bodies else False
        headers = start.get("headers", [])
        plain = not any(n.lower() == b"content-encoding" for n, _ in headers)
        if start["status"] != 200 or more or not plain or len(body) > _MAX_ANSWER:
            return held
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):  # not opencode's answer (or nested too deep)
            return held
        if not isinstance(answer, dict) or not isinstance(answer.get("ticket"), str):
            return held
        answer["ticket"] = sign_ticket(self.origin_secret, answer["ticket"], pty, location)
        signed = json.dumps(answer).encode()
        kept = [(n, v) for n, v in headers
                if n.lower() not in (b"content-length", b"transfer-encoding")]
        kept.append((b"content-length", str(len(signed)).encode()))
        return [{**start, "headers": kept},
                {"type": "http.response.body", "body": signed, "more_body": False}]
