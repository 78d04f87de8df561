"""How the container starts and stops opencode, against a stand-in that behaves like
opencode 1.18 once a project has booted: it answers /global/health behind Basic auth,
ignores SIGTERM, and has started a process of its own (a terminal, say)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from container.opencode import OpencodeFailed, OpencodeServer
from tests.support.procs import alive

STAND_IN = """\
import base64, http.server, json, os, signal, subprocess, sys

port = int(sys.argv[sys.argv.index("--port") + 1])
record = os.environ["STAND_IN_RECORD"]
expected = "Basic " + base64.b64encode(
    f"{os.environ['OPENCODE_SERVER_USERNAME']}:{os.environ['OPENCODE_SERVER_PASSWORD']}".encode()).decode()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# Inherits our stdout, as opencode's terminals and language servers do.
helper = subprocess.Popen(["sleep", "300"])
with open(record, "w") as out:
    json.dump({"pid": os.getpid(), "helper": helper.pid, "env": sorted(os.environ)}, out)

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.headers.get("authorization") != expected:
            return self._answer(401, {})
        self._answer(200, {"healthy": True})

    def do_POST(self):
        with open(record + ".dispose", "w") as out:
            out.write(self.path)
        self._answer(200, True)

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _stand_in(tmp_path: Path) -> tuple[str, Path]:
    binary = tmp_path / "opencode"
    binary.write_text(f"#!{sys.executable}\n{STAND_IN}")
    binary.chmod(0o755)
    return str(binary), tmp_path / "record.json"


def _server(tmp_path: Path) -> tuple[OpencodeServer, Path]:
    binary, record = _stand_in(tmp_path)
    env = {"PATH": os.defpath, "STAND_IN_RECORD": str(record)}
    return OpencodeServer(binary, tmp_path / "workspace", env), record


def test_a_stop_disposes_then_kills_opencode_and_what_it_started(tmp_path: Path) -> None:
    server, record = _server(tmp_path)

    async def scenario() -> tuple[int, float]:
        await server.start()
        await server.wait_ready(30)
        started = time.monotonic()
        code = await server.stop(timeout=0.5)
        return code, time.monotonic() - started

    code, took = asyncio.run(scenario())
    seen = json.loads(record.read_text())
    # It ignored SIGTERM: killed after the grace time, with the process it started.
    assert code == -signal.SIGKILL and 0.5 <= took < 5
    assert (tmp_path / "record.json.dispose").read_text() == "/global/dispose"
    assert not alive(seen["pid"]) and not alive(seen["helper"])


def test_opencode_shares_the_container_process_group(tmp_path: Path) -> None:
    """A stop signal sent to the container's group reaches opencode too."""
    server, _ = _server(tmp_path)

    async def scenario() -> int:
        await server.start()
        try:
            assert server.child is not None
            return os.getpgid(server.child.pid)
        finally:
            await server.stop(timeout=0.5)

    assert asyncio.run(scenario()) == os.getpgid(0)


def test_a_crash_is_seen_even_while_a_process_it_started_lives_on(tmp_path: Path) -> None:
    server, record = _server(tmp_path)

    async def scenario() -> int:
        await server.start()
        await server.wait_ready(30)
        seen = json.loads(record.read_text())
        os.kill(seen["pid"], signal.SIGKILL)
        try:
            # The helper still holds opencode's stdout open: its exit must show anyway.
            return await asyncio.wait_for(server.wait(), 5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(seen["helper"], signal.SIGKILL)

    assert asyncio.run(scenario()) == -signal.SIGKILL


def test_a_missing_binary_or_an_early_exit_fails_clearly(tmp_path: Path) -> None:
    missing = OpencodeServer(str(tmp_path / "no-such-opencode"), tmp_path, {"PATH": os.defpath})
    with pytest.raises(OpencodeFailed, match="opencode binary was not found"):
        asyncio.run(missing.start())

    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    server = OpencodeServer(str(broken), tmp_path, {"PATH": os.defpath})

    async def scenario() -> None:
        await server.start()
        await server.wait_ready(30)

    with pytest.raises(OpencodeFailed, match="exited with status 3 while starting"):
        asyncio.run(scenario())
