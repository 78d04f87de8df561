"""The terminal listener: how the opencode terminal reaches a browser on AWS.

Lambda Function URLs and API Gateway do not carry WebSocket upgrades, so CloudFront's
``/pty/*/connect`` behaviour goes straight to the instance through a VPC origin, in
plain HTTP inside the VPC (CloudFront refuses self-signed origin certificates). This
listener is that origin. The security group admits only CloudFront's VPC origin, but
that is not where trust ends: a request must carry exactly one CloudFront secret origin header
(infra/cloudfront.py), be a WebSocket upgrade of exactly the terminal's path, carry
opencode's ``ticket`` and exactly one ``Origin`` of the viewer's own site (or
OCEDGE_PUBLIC_URL). Anything else is refused with a 4xx before a byte reaches opencode,
so no single-use ticket is ever spent on a refused request.

The ticket must also be one the edge handed out: the edge signs every ticket it passes
on (edge/terminal_tickets.py; infra/cloudfront.py), bound to the terminal, the
location (``directory``) it was asked for and an expiry, because opencode loads the
project of whatever directory a request names before it checks its own ticket.

What passes is relayed to opencode on loopback, which checks the ticket (only an
authenticated ``POST /pty/{id}/connect-token`` through the edge mints one) and refuses
it unless Origin's host equals Host: so Host is the viewer's host and Origin goes on as
received. No credential is added: opencode lets a ticketed connect in on the ticket
alone, and would let an upgrade carrying its own credential in with no ticket at all
(opencode 1.18.33, tried), so the ticket stays the only key. The client's Cookie,
Authorization and every other header of theirs stay here. Messages pass both ways,
close codes too, and both sides are pinged well within CloudFront's 10-minute idle close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qsl, urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Origin

from infra.cloudfront import (
    ORIGIN_SECRET_HEADER,
    TERMINAL_PATH,
    VIEWER_HOST_HEADER,
    location_of,
    open_ticket,
    secret_matches,
    viewer_host,
)

log = logging.getLogger("ocedge.terminal")
# websockets' own log, kept above DEBUG: at DEBUG it writes every header it sends or
# receives (CloudFront's secret, opencode's credential, the client's cookie).
_wire = logging.getLogger("ocedge.terminal.wire")
_wire.setLevel(logging.WARNING)

# From the browser: keystrokes, resizes and pastes. From opencode: live output as the
# PTY reads it, and on connect its replay in chunks of 64 Ki characters (at most
# 192 KiB of UTF-8) — well within the cap, which only bounds what one message may hold.
_FROM_BROWSER = 1 << 20
_FROM_OPENCODE = 4 << 20
# opencode's replay position: where in the terminal's output to resume (-1: the end).
_CURSOR = re.compile(r"-1|[0-9]{1,15}")
# opencode's own answers to a ticket, passed on; anything else is a 502.
_OPENCODE_REFUSALS = frozenset({400, 401, 403, 404})


def _refusal(status: HTTPStatus, message: str) -> Response:
    """A short JSON answer; it never repeats anything the request carried."""
    body = json.dumps({"error": status.phrase.lower().replace(" ", "_"),
                       "message": message}).encode()
    headers = Headers([("Content-Type", "application/json"),
                       ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)


def _refuse(status: HTTPStatus, message: str, target: str, why: str) -> Response:
    log.info("terminal: refused %d %r: %s", status.value, target[:120], why)
    return _refusal(status, message)


def _values(headers: Headers, name: bytes) -> list[bytes]:
    # websockets decodes header values as ISO-8859-1, so this gives back their bytes.
    return [value.encode("latin-1") for value in headers.get_all(name.decode())]


def _origin_of(url: str | None) -> str | None:
    if not url:
        return None
    split = urlsplit(url.strip())
    return f"{split.scheme}://{split.netloc}".lower()


def _passed_on(closed: ConnectionClosed) -> tuple[int, str]:
    """The close code and reason to send the other side: the closing side's own, else
    the one this side was closed with here (1009 for a message over the cap, 1011 for
    a ping unanswered), 1000 for a close frame without a code, 1011 when it vanished
    (1005, 1006 and 1015 describe a close but may not be sent in one)."""
    frame = closed.rcvd or closed.sent
    if frame is None:
        return 1011, ""
    if frame.code == 1005:
        return 1000, ""
    return frame.code, frame.reason


async def _carry(source: Connection, sink: Connection,
                 on_message: Callable[[], None] | None = None) -> None:
    """Messages from ``source`` to ``sink``, text as text and binary as binary; when
    ``source`` closes, ``sink`` is closed with its code. When ``sink`` closes first, the
    carrier in the other direction passes that on."""
    while True:
        try:
            message = await source.recv()
        except ConnectionClosed as closed:
            code, reason = _passed_on(closed)
            await sink.close(code, reason)
            return
        if on_message is not None:
            on_message()
        try:
            await sink.send(message)
        except ConnectionClosed:
            return


class _Connection(ServerConnection):
    """One client connection. It answers a request that is not a GET itself (websockets
    would close one that has a body without a word), and holds opencode's side from
    the handshake to the relay, letting it go if the handshake never completes."""

    upstream: ClientConnection | None = None
    _start: bytes | None = b""  # the request's first bytes, until the method is known
    _refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._start is not None:
            self._start = (self._start + data)[:4]
            if not b"GET ".startswith(self._start):
                self._refused = True
                log.info("terminal: refused 405: not a GET")
                self.transport.write(_refusal(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    "Only the terminal's WebSocket upgrade (GET) is served here.").serialize())
                self.transport.close()
                return
            if len(self._start) == 4:
                self._start = None
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.upstream is not None:  # the handshake failed after opencode accepted
            self.upstream.transport.abort()
            self.upstream = None


class TerminalListener:
    """CloudFront's terminal origin in front of opencode on 127.0.0.1:``opencode_port``.

    ``public_url`` (OCEDGE_PUBLIC_URL) is accepted as an Origin besides
    https://<viewer host>; ``ping_interval`` paces the pings to both sides (and is how
    long a pong may take); ``handshake_timeout`` bounds a connection's time before its
    handshake is done."""

    def __init__(self, origin_secret: str, opencode_port: int, public_url: str | None = None,
                 ping_interval: float = 30.0, handshake_timeout: float = 10.0) -> None:
        self._secret = origin_secret
        self._opencode_port = opencode_port
        self._public_origin = _origin_of(public_url)
        self.ping_interval = ping_interval
        self.handshake_timeout = handshake_timeout
        self.server: Server | None = None
        # Called for each message a browser types into a terminal: activity, which on
        # AWS never passes the edge (container/main.py renews the idle deadline with it).
        self.on_activity: Callable[[], None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0: any free port); returns the bound port."""
        self.server = await serve(
            self._relay, host, port, process_request=self._admit,
            create_connection=_Connection, compression=None, server_header=None,
            open_timeout=self.handshake_timeout, ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval, close_timeout=5, max_size=_FROM_BROWSER,
            logger=_wire)
        bound: int = self.server.sockets[0].getsockname()[1]
        log.info("terminal listener on %s:%d", host, bound)
        return bound

    async def close(self) -> None:
        """Stop listening; open terminals are closed with 1001 (going away), which
        opencode is told too."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _admit(self, connection: ServerConnection, request: Request) -> Response:
        """The handshake's answer: a refusal, or opencode's side opened and the 101."""
        target, _, query = request.path.partition("?")
        headers = request.headers
        if not secret_matches(_values(headers, ORIGIN_SECRET_HEADER), self._secret):
            return _refuse(HTTPStatus.FORBIDDEN, "This listener admits only requests sent "
                           "through the deployment's CloudFront distribution.",
                           target, "no single matching origin secret")
        if TERMINAL_PATH.fullmatch(target) is None:
            return _refuse(HTTPStatus.NOT_FOUND, "Only the terminal's WebSocket "
                           "(/pty/{id}/connect) is served here.", target, "not the terminal")
        host = viewer_host(_values(headers, VIEWER_HOST_HEADER))
        if host is None:
            return _refuse(HTTPStatus.BAD_REQUEST, "The request has no viewer host.",
                           target, "no single well-formed viewer host")
        origins = headers.get_all("Origin")
        if len(origins) != 1 or origins[0].lower() not in (f"https://{host}",
                                                           self._public_origin):
            return _refuse(HTTPStatus.FORBIDDEN, "The terminal opens only from this "
                           "deployment's own pages.", target, "Origin is not the viewer's site")
        fields = parse_qsl(query, keep_blank_values=True)
        tickets = [value for name, value in fields if name == "ticket"]
        if len(tickets) != 1 or not tickets[0]:
            return _refuse(HTTPStatus.UNAUTHORIZED, "The terminal needs one ticket from "
                           "POST /pty/{id}/connect-token.", target, "no single ticket")
        # Only a ticket the edge handed out, for this terminal and location, and fresh:
        # opencode loads the location's project before it checks its own ticket.
        location = location_of(fields)
        ticket = open_ticket(self._secret, tickets[0], target.split("/")[2], location)
        if ticket is None:
            return _refuse(HTTPStatus.UNAUTHORIZED, "The terminal's ticket was not handed out "
                           "by this deployment's edge, or it has expired.", target,
                           "ticket not signed by the edge for this terminal and location")
        cursors = [value for name, value in fields if name == "cursor"]
        relayed = [("ticket", ticket), *location] + (
            [("cursor", cursors[0])] if len(cursors) == 1 and _CURSOR.fullmatch(cursors[0]) else [])
        handshake = connection.protocol.accept(request)
        if handshake.status_code != 101:  # not an upgrade (426), or a malformed one (400)
            status = handshake.status_code
            return _refuse(HTTPStatus(status if 400 <= status < 500 else 400),
                           "Only the terminal's WebSocket upgrade (HTTP/1.1) is served here.",
                           target, f"not a WebSocket handshake ({status})")
        # opencode gets only what was checked, re-encoded: opencode's own ticket, the
        # signed location and the replay cursor; not another ticket its own parser might
        # find (say after a '#'), nor any other parameter.
        try:
            opening = connect(
                f"ws://{host}{target}?{urlencode(relayed)}", host="127.0.0.1",
                port=self._opencode_port,
                origin=Origin(origins[0]),
                compression=None, max_size=_FROM_OPENCODE, open_timeout=self.handshake_timeout,
                ping_interval=self.ping_interval, ping_timeout=self.ping_interval,
                close_timeout=5, proxy=None, user_agent_header=None, logger=_wire)
        except (InvalidURI, ValueError):
            return _refuse(HTTPStatus.BAD_REQUEST, "The request has no viewer host.",
                           target, "the viewer host is not an address")
        try:
            upstream = await opening
        except InvalidStatus as exc:
            status = exc.response.status_code
            return _refuse(HTTPStatus(status if status in _OPENCODE_REFUSALS else 502),
                           "opencode refused the terminal (an unknown, used or expired "
                           "ticket?).", target, f"opencode answered {status}")
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.warning("terminal: opencode did not open the terminal: %s", type(exc).__name__)
            return _refusal(HTTPStatus.BAD_GATEWAY, "opencode did not answer.")
        assert isinstance(connection, _Connection)
        if connection.state is not State.CONNECTING:  # the client left meanwhile
            await upstream.close()
            return _refusal(HTTPStatus.BAD_REQUEST, "The connection closed.")
        connection.upstream = upstream
        log.info("terminal: opened %s", target)
        return handshake

    def _activity(self) -> None:
        if self.on_activity is not None:
            self.on_activity()

    async def _relay(self, browser: ServerConnection) -> None:
        assert isinstance(browser, _Connection) and browser.upstream is not None
        upstream, browser.upstream = browser.upstream, None
        try:
            await asyncio.gather(_carry(browser, upstream, self._activity),
                                 _carry(upstream, browser))
        finally:
            await upstream.close()
