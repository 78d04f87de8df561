"""A webhook receiver for notice tests: records every POST it gets (path, headers, body,
arrival time) and answers with the status a test sets — or not at all (``hang``), as
a dead webhook would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infra.net import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() on arrival

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """On 127.0.0.1:<port>; ``url`` carries a token in its path, as ntfy topics and Slack
    webhooks do (tests check it never reaches a log)."""

    TOKEN = "hook-token-3f9a7c"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/{self.TOKEN}"
        self.received: list[Received] = []
        self.status = 200
        self.hang = 0.0  # seconds to wait before answering
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                        time.time()))
                if receiver.hang:
                    time.sleep(receiver.hang)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def notices(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The notices once ``count`` have arrived (or all there are after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.notices()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.notices()

    def clear(self) -> None:
        with self._lock:
            self.received.clear()


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.hang = 0.0
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join(timeout=10)
