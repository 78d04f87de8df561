"""A local stand-in for the CloudFront distribution of template.yaml, so the browser can
be tested through the AWS shape: it does to each request what the distribution does
(infra/cloudfront.py is the contract) and nothing more.

- TLS for the viewer (a self-signed certificate for 127.0.0.1: the browser context must
  ignore certificate errors), HTTP/1.1 to the origins, as CloudFront speaks to them.
- Behaviours: the template's terminal behaviour (its ``PathPattern``, matched as
  CloudFront matches one) to the terminal listener, everything else to the edge.
- The viewer-request function: ``x-ocedge-viewer-host`` = the viewer's Host,
  ``x-ocedge-viewer-address`` = the viewer's IP, over whatever the viewer sent.
- The origin request policies: the edge gets every viewer header but Host
  (AllViewerExceptHostHeader); the terminal only the headers the template's
  TerminalRequestPolicy lists (no Cookie, no Authorization). Host is the origin's own.
- The origin custom header ``x-ocedge-origin-secret`` on both origins.
- A WebSocket upgrade on the default behaviour is refused here: its origin is a Lambda
  Function URL, which carries no WebSocket (README, "The terminal on AWS").

One request per connection (``Connection: close`` both ways): simple, and enough for a
browser. Bodies, event streams and upgraded WebSockets pass as bytes, as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from container.tls import make_certificate
from infra.cloudfront import (
    HOP_HEADERS,
    ORIGIN_SECRET_HEADER,
    VIEWER_ADDRESS_HEADER,
    VIEWER_HOST_HEADER,
)
from infra.net import free_port

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
# How a request's body is framed: passed on whatever the policy (it is not a viewer
# header CloudFront chooses to forward but how the body reaches the origin).
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def path_pattern(pattern: str) -> re.Pattern[str]:
    """A cache behaviour's path pattern as CloudFront matches it: ``*`` is 0 or more
    characters (``/`` among them), ``?`` exactly one, anything else itself, case
    sensitive; a leading ``/`` changes nothing ("Path pattern", docs.aws.amazon.com/
    AmazonCloudFront/latest/DeveloperGuide/DownloadDistValuesCacheBehavior.html#DownloadDistValuesPathPattern).
    Use it with ``fullmatch`` on the request's path."""
    parts = {"*": ".*", "?": "."}
    body = "".join(parts.get(c) or re.escape(c) for c in pattern.removeprefix("/"))
    return re.compile("/" + body, re.DOTALL)


def terminal_behaviour(template: Path = TEMPLATE) -> tuple[re.Pattern[str], frozenset[bytes]]:
    """The template's terminal behaviour: its path pattern, and the viewer headers its
    origin request policy passes on (lower case)."""
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    found: dict[str, Any] = yaml_parse(template.read_text())["Resources"]
    behaviour, = found["Distribution"]["Properties"]["DistributionConfig"]["CacheBehaviors"]
    policy = found[behaviour["OriginRequestPolicyId"]["Ref"]]["Properties"]
    config = policy["OriginRequestPolicyConfig"]
    assert config["HeadersConfig"]["HeaderBehavior"] == "whitelist", "the stand-in knows no other"
    headers = {h.lower().encode() for h in config["HeadersConfig"]["Headers"]}
    if config["CookiesConfig"]["CookieBehavior"] == "all":
        headers.add(b"cookie")
    return path_pattern(behaviour["PathPattern"]), frozenset(headers)


def _answer(status: bytes, reason: str) -> bytes:
    body = reason.encode()
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body)


class CloudFrontStandIn:
    """The distribution, on https://127.0.0.1:<port>, in a thread of its own."""

    def __init__(self, edge_port: int, terminal_port: int, secret: str) -> None:
        self.edge_port = edge_port
        self.terminal_port = terminal_port
        self.secret = secret.encode()
        self.terminal_path, self.terminal_headers = terminal_behaviour()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        # What went where: (behaviour, path), for the test to check the routing; and the
        # paths of WebSocket upgrades refused on the default behaviour.
        self.routed: list[tuple[str, str]] = []
        self.refused_upgrades: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> CloudFrontStandIn:
        self._thread.start()
        context = make_certificate("127.0.0.1").server_context()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=context, limit=256 * 1024),
            self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def origin_request(self, head: bytes, viewer_ip: str) -> tuple[int, bytes] | bytes:
        """(origin port, request head) for a viewer's request head, or the whole answer
        the distribution gives itself."""
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            return _answer(b"400 Bad Request", "malformed request")
        path = urlsplit(parts[1].decode("latin-1")).path
        headers = [(line.partition(b":")[0].strip().lower(), line) for line in lines[1:]]
        host = b"".join(line.partition(b":")[2].strip() for n, line in headers if n == b"host")
        upgrade = any(name == b"upgrade" for name, _ in headers)
        terminal = self.terminal_path.fullmatch(path) is not None
        self.routed.append(("terminal" if terminal else "edge", path))
        if upgrade and not terminal:
            # AWS documents no answer of a Function URL to an upgrade; it is not a 101, so
            # the browser's WebSocket fails (onerror, then close 1006). 502 stands for it.
            self.refused_upgrades.append(path)
            return _answer(b"502 Bad Gateway", "the edge's origin, a Function URL, "
                                               "carries no WebSocket")
        # The viewer-request function: its two headers over the viewer's.
        viewer = [(n, line) for n, line in headers if n not in HOP_HEADERS and n != b"host"]
        if host:
            viewer.append((VIEWER_HOST_HEADER, VIEWER_HOST_HEADER + b": " + host))
        viewer.append((VIEWER_ADDRESS_HEADER, VIEWER_ADDRESS_HEADER + b": " + viewer_ip.encode()))
        # The origin request policy; CloudFront itself speaks the upgrade to the origin.
        if terminal:
            kept = [line for n, line in viewer if n in self.terminal_headers or n in _FRAMING]
        else:
            kept = [line for n, line in viewer if n not in (b"connection", b"upgrade")]
        port = self.terminal_port if terminal else self.edge_port
        added = [b"Host: 127.0.0.1:%d" % port, ORIGIN_SECRET_HEADER + b": " + self.secret]
        if terminal and b"user-agent" not in self.terminal_headers:
            added.append(b"User-Agent: Amazon CloudFront")  # RequestAndResponseBehaviorCustomOrigin
        added += [b"Upgrade: websocket", b"Connection: Upgrade"] if upgrade else \
            [b"Connection: close"]
        return port, b"\r\n".join([lines[0], *kept, *added]) + b"\r\n\r\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            peer = writer.get_extra_info("peername")
            routed = self.origin_request(head, peer[0] if peer else "127.0.0.1")
            if isinstance(routed, bytes):
                writer.write(routed)
                return
            port, request = routed
            origin_reader, upstream = await asyncio.open_connection("127.0.0.1", port)
            upstream.write(request)
            forth = asyncio.ensure_future(_pipe(reader, upstream))
            try:
                response = await origin_reader.readuntil(b"\r\n\r\n")
                if not response.startswith(b"HTTP/1.1 101"):
                    # One request per connection for the viewer, too.
                    response = response[:-2] + b"Connection: close\r\n\r\n" \
                        if b"\r\nconnection:" not in response.lower() else response
                writer.write(response)
                await _pipe(origin_reader, writer)
            finally:
                forth.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await forth
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                OSError):
            pass
        finally:
            for stream in (writer, upstream):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextmanager
def running_cloudfront(edge_port: int, terminal_port: int, secret: str) -> Iterator[CloudFrontStandIn]:
    standin = CloudFrontStandIn(edge_port, terminal_port, secret).start()
    try:
        yield standin
    finally:
        standin.stop()
