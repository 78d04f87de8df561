"""The ticket-signing layer: behind CloudFront, the terminal tickets opencode hands out
through the edge are signed for their terminal and location, so the container's
terminal listener takes them (and no other); every other answer passes untouched."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge.terminal_tickets import TerminalTickets
from edge.types import Message, Receive, Scope, Send
from infra.cloudfront import open_ticket

pytestmark = pytest.mark.unit

SECRET = "ticket-layer-origin-secret-0123456789abcdef"


class Opencode:
    """The layers inside, answering as opencode does (in ``chunks``), and recording the
    request headers it got."""

    def __init__(self, body: bytes, status: int = 200, chunks: int = 1,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.body, self.status, self.chunks = body, status, chunks
        self.headers = headers or [(b"content-type", b"application/json"),
                                   (b"content-length", str(len(body)).encode())]
        self.seen: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope)
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.headers})
        size = -(-len(self.body) // self.chunks) if self.body else 1
        parts = [self.body[i:i + size] for i in range(0, len(self.body), size)] or [b""]
        for n, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part,
                        "more_body": n < len(parts) - 1})


def post(app: TerminalTickets, path: str, query: bytes = b"", method: str = "POST",
         raw_path: bytes | None = None) -> list[Message]:
    scope: Scope = {"type": "http", "method": method, "path": path, "query_string": query,
                    "raw_path": raw_path if raw_path is not None else path.encode(),
                    "headers": [(b"accept-encoding", b"gzip, br"), (b"origin", b"https://x")]}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def answer(sent: list[Message]) -> tuple[dict[bytes, bytes], bytes]:
    return dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("chunks", [1, 3])
def test_the_ticket_is_signed_for_its_terminal_and_location(chunks: int) -> None:
    opencode = Opencode(b'{"ticket":"uuid-1","expires_in":60}', chunks=chunks)
    sent = post(TerminalTickets(opencode, SECRET), "/pty/pty_a/connect-token",
                b"directory=%2Fwork%2Fmy%20app&x=1")
    headers, body = answer(sent)
    given = json.loads(body)
    assert given["expires_in"] == 60 and given["ticket"] != "uuid-1"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert open_ticket(SECRET, given["ticket"], "pty_a", [("directory", "/work/my app")]) \
        == "uuid-1"
    assert open_ticket(SECRET, given["ticket"], "pty_b", [("directory", "/work/my app")]) is None
    # Asked for uncompressed, so that it can be read; the rest of the request as it was.
    assert opencode.seen[0]["headers"] == [(b"origin", b"https://x")]


@pytest.mark.parametrize(("path", "method", "opencode"), [
    ("/pty/pty_a/connect-token", "POST", Opencode(b'{"error":"no"}', status=403)),
    ("/pty/pty_a/connect-token", "POST", Opencode(b"not json")),
    ("/pty/pty_a/connect-token", "POST", Opencode(b'["ticket"]')),
    ("/pty/pty_a/connect-token", "POST", Opencode(b'{"ticket":7}')),
    ("/pty/pty_a/connect-token", "POST", Opencode(
        b'{"ticket":"uuid-1"}', headers=[(b"content-encoding", b"gzip")])),
    ("/pty/pty_a/connect-token", "POST", Opencode(b'{"ticket":"' + b"x" * 20_000 + b'"}',
                                                  chunks=4)),
    ("/pty/pty_a/connect-token", "GET", Opencode(b'{"ticket":"uuid-1"}')),
    ("/pty/pty_a/connect", "POST", Opencode(b'{"ticket":"uuid-1"}')),
    ("/session", "POST", Opencode(b'{"ticket":"uuid-1"}')),
    ("/pty/pty_a/connect-token", "POST", Opencode(
        b'{"ticket":"uuid-1","x":' + b"[" * 5000 + b"]" * 5000 + b"}")),
], ids=["refused", "not-json", "not-an-object", "ticket-not-text", "compressed", "too-big",
        "get", "other-path", "elsewhere", "nested-too-deep"])
def test_every_other_answer_passes_untouched(path: str, method: str, opencode: Opencode) -> None:
    sent = post(TerminalTickets(opencode, SECRET), path, method=method)
    headers, body = answer(sent)
    assert body == opencode.body
    assert sent[0]["status"] == opencode.status
    assert headers.get(b"content-encoding") == dict(opencode.headers).get(b"content-encoding")


@pytest.mark.parametrize("raw", [b"/pty/pty_a%2Fconnect-token", b"/pty/%70ty_a/connect-token",
                                 b"/pty/pty_a/connect%2Dtoken"])
def test_only_the_target_opencode_routes_as_the_ticket_endpoint_is_signed(raw: bytes) -> None:
    # The decoded path matches, but the proxy sends opencode the raw one.
    opencode = Opencode(b'{"ticket":"uuid-1","expires_in":60}')
    sent = post(TerminalTickets(opencode, SECRET), "/pty/pty_a/connect-token", raw_path=raw)
    assert answer(sent)[1] == opencode.body
