"""Run the real edge app under uvicorn, in a thread, for tests: on uvloop with
``edge.server``'s httptools protocol, as ``ocedge dev`` and the Lambda front door
run it."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from edge.app import create_app
from edge.server import HttpProtocol
from infra.backends import backends_for_requests
from infra.credentials import mint_api_key
from infra.net import free_port
from infra.settings import Settings
from tests.support.fake_model import opencode_config

__all__ = ["ADMIN_PASSWORD", "EdgeServer", "free_port", "make_settings", "running_edge"]

ADMIN_PASSWORD = "test-admin-password-123"


def make_settings(state_dir: Path, model_url: str | None = None, **overrides: Any) -> Settings:
    """Settings as a test wants them: isolated state, a known admin password, and
    (with ``model_url``) opencode configured to use the fake model server."""
    env = {"OCEDGE_STATE_DIR": str(state_dir), "OCEDGE_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "OCEDGE_KEY_CACHE_TTL": "0", "PATH": os.environ.get("PATH", os.defpath),
           "HOME": str(state_dir / "home"), "LANG": "C.UTF-8",
           # opencode installs its plugin package from npm in the background on a
           # fresh config directory; tests have no use for it.
           "npm_config_offline": "true"}
    if model_url is not None:
        env["OPENCODE_CONFIG_CONTENT"] = json.dumps(opencode_config(model_url))
    settings = Settings.from_env(env)
    return settings.with_overrides(**overrides) if overrides else settings


class EdgeServer:
    """The edge listening on 127.0.0.1:<port>; ``run`` executes coroutines on its loop."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The backends of the request path, as the edge opens them in production.
        self.edge = create_app(settings, backends_for_requests(settings))
        config = uvicorn.Config(self.edge, host="127.0.0.1", port=self.port, http=HttpProtocol,
                                log_level="warning", lifespan="on", proxy_headers=False,
                                server_header=False, date_header=False)
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        # The loop uvicorn picks in production (`--loop auto`): uvloop.
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> EdgeServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the edge did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        # The container is this edge's child process: stop it with the edge.
        asyncio.run(self.edge.backends.compute.stop())
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def run(self, coro: Any) -> Any:
        """Run a coroutine (e.g. a store call) on the edge's own loop."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def create_key(self, name: str = "test", expires: float | None = None) -> str:
        backends = self.edge.backends
        new = mint_api_key(name, backends.pepper, expires=expires)
        self.run(backends.keys.put_key(new.record))
        return new.key


@contextmanager
def running_edge(settings: Settings) -> Iterator[EdgeServer]:
    server = EdgeServer(settings).start()
    try:
        yield server
    finally:
        server.stop()
