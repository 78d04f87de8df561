"""Server-sent events through the edge with the real opencode: event by event, no buffering."""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx

from tests.support.edge import EdgeServer
from tests.support.login import login_cookie


def _subscribe(url: str, key: str, events: queue.Queue[tuple[float, dict[str, object]]],
               ready: threading.Event, stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    with httpx.stream("GET", f"{url}/global/event", headers=headers,
                      timeout=httpx.Timeout(10, read=None)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        ready.set()
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.put((time.monotonic(), json.loads(line[5:])))
            if stop.is_set():
                return
    events.put((time.monotonic(), {"closed": True}))


def test_event_caused_through_the_edge_arrives_within_a_second(live_edge: EdgeServer) -> None:
    key = live_edge.create_key("sse")
    auth = {"Authorization": f"Bearer {key}"}
    # Wake the container first so the measurement is about streaming, not starting.
    assert httpx.get(f"{live_edge.url}/global/health", headers=auth, timeout=60).status_code == 200

    events: queue.Queue[tuple[float, dict[str, object]]] = queue.Queue()
    ready, stop = threading.Event(), threading.Event()
    reader = threading.Thread(target=_subscribe, args=(live_edge.url, key, events, ready, stop),
                              daemon=True)
    reader.start()
    assert ready.wait(15)
    time.sleep(0.3)

    sent = time.monotonic()
    created = httpx.post(f"{live_edge.url}/session", headers=auth, json={"title": "sse-probe"},
                         timeout=15)
    assert created.status_code == 200
    session_id = created.json()["id"]

    arrived = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            at, event = events.get(timeout=0.5)
        except queue.Empty:
            continue
        assert "closed" not in event, "the event stream ended before the event arrived"
        if session_id in json.dumps(event):
            arrived = at
            break
    stop.set()
    assert arrived is not None, "no event for the new session arrived through the edge"
    assert arrived - sent < 1.0, f"event took {arrived - sent:.3f} s through the edge"


def test_terminal_websocket_through_the_edge_runs_a_command(live_edge: EdgeServer) -> None:
    """The opencode terminal (/pty/{id}/connect) works through the edge with a cookie
    only, which is all a browser's WebSocket can carry."""
    import asyncio

    from websockets.asyncio.client import connect

    key = live_edge.create_key("pty")
    # Logged in on the login page (with the key as the password), as a browser does.
    cookie = login_cookie(live_edge.url, "anyone", key).split("=", 1)[1]
    created = httpx.post(f"{live_edge.url}/pty", json={}, timeout=60,
                         cookies={"ocedge_session": cookie})
    assert created.status_code == 200, created.text
    pty_id = created.json()["id"]

    async def run_command() -> str:
        ws_url = live_edge.url.replace("http://", "ws://") + f"/pty/{pty_id}/connect"
        async with connect(ws_url, additional_headers={"Cookie": f"ocedge_session={cookie}",
                                                        "Origin": live_edge.url},
                           open_timeout=15) as ws:
            await ws.send("echo edge-$((6*7))\n")
            out = ""
            while "edge-42\r\n" not in out:
                message = await asyncio.wait_for(ws.recv(), 10)
                out += message if isinstance(message, str) else message.decode(errors="replace")
            return out

    assert "edge-42" in asyncio.run(run_command())
