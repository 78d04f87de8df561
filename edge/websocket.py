"""The WebSocket bridge to the container (the opencode terminal): messages both
ways, close codes passed on, headers treated as for HTTP (the client's credentials
swapped for the internal one, ``Origin`` kept so opencode can check it too)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from edge.forwarding import WS_DROP, Upstream, UpstreamUnavailable, forward_headers
from edge.types import Receive, Scope, Send


async def forward_websocket(scope: Scope, receive: Receive, send: Send, upstream: Upstream,
                            trust_forwarded: bool, scheme: str = "ws",
                            tls: ssl.SSLContext | None = None,
                            on_message: Callable[[], None] | None = None) -> None:
    """Bridge a client WebSocket to the container's. Raises UpstreamUnavailable before
    the client is accepted when the container refuses."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    headers = forward_headers(scope, upstream, WS_DROP, trust_forwarded)
    headers = [(n, v) for n, v in headers if n != b"host"]
    subprotocols = [p for p in scope.get("subprotocols", []) if p]
    try:
        upstream_ws = await connect(
            upstream.url(scheme, scope),
            additional_headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers],
            subprotocols=subprotocols or None,
            open_timeout=10, ping_interval=20, ping_timeout=20, max_size=None,
            compression=None, ssl=tls, user_agent_header=None, proxy=None)
    except (OSError, TimeoutError, InvalidHandshake, InvalidStatus, ssl.SSLError) as exc:
        raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from exc

    message = await receive()
    if message["type"] != "websocket.connect":
        await upstream_ws.close()
        return
    await send({"type": "websocket.accept", "subprotocol": upstream_ws.subprotocol})

    async def client_to_upstream() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                if on_message is not None:
                    on_message()
                if msg.get("bytes") is not None:
                    await upstream_ws.send(msg["bytes"])
                elif msg.get("text") is not None:
                    await upstream_ws.send(msg["text"])
            elif msg["type"] == "websocket.disconnect":
                code = msg.get("code", 1000)
                if code in (1005, 1006, 1015):
                    # The client vanished (reserved codes, never sent in a close frame).
                    code = 1000 if code == 1005 else 1011
                await upstream_ws.close(code=code)
                return

    async def upstream_to_client() -> None:
        try:
            async for data in upstream_ws:
                if isinstance(data, bytes):
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data})
            code = upstream_ws.close_code or 1000
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1011
        if code in (1005, 1006, 1015):
            # Reserved codes that must not be sent in a close frame.
            code = 1000 if code == 1005 else 1011
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})

    tasks = {asyncio.ensure_future(client_to_upstream()),
             asyncio.ensure_future(upstream_to_client())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        await upstream_ws.close()
