"""The three ways to reach one opencode server: direct, through the edge, through nginx."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from bench.procs import Child, children_of
from container.opencode import USERNAME as OPENCODE_USER
from infra.backends import backends_for_tools
from infra.credentials import mint_api_key
from infra.interfaces import RUNNING
from infra.local.compute import LocalCompute
from infra.net import free_port
from infra.settings import PROJECT_ROOT, Settings

_NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream opencode {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        auth_basic "bench";
        auth_basic_user_file {prefix}/htpasswd;
        location / {{
            proxy_pass http://opencode;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "{authorization}";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


class BenchError(RuntimeError):
    """The benchmark could not set itself up; the message says what to do."""


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True)
class Target:
    """One way in: where it listens and the Authorization header it wants."""

    name: str
    port: int
    authorization: str
    # The proxy's own processes, whose CPU time per request is reported (none for direct).
    pids: tuple[int, ...] = ()

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": self.authorization})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def _server_flags() -> list[str]:
    """As every front door runs the edge: uvloop, and httptools through
    ``edge.server`` (the response head sent with the body)."""
    if not importlib.util.find_spec("uvloop") or not importlib.util.find_spec("httptools"):
        raise BenchError("uvloop and httptools are missing: pip install -e '.[dev]'")
    return ["--loop", "uvloop", "--http", "edge.server:HttpProtocol"]


class Stack:
    """A temporary directory holding the edge's state, its container and nginx.

    ``close`` (or leaving the ``with`` block) stops every process by PID and
    removes the directory.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ocedge-bench-"))
        # nginx workers drop to `nobody` when started as root and must reach the htpasswd.
        self.root.chmod(0o755)
        self.state_dir = self.root / "state"
        self.children: list[Child] = []
        self.targets: dict[str, Target] = {}
        self.edge_server = "uvloop, httptools via edge.server"

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        # The edge started the container in its own session; its PID file names it.
        if self.state_dir.exists():
            asyncio.run(LocalCompute(self.state_dir).stop(timeout=15))
        shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child.spawn(name, argv, self.root / f"{name}.log", env, cwd=PROJECT_ROOT)
        self.children.append(child)
        return child

    def _wait(self, child: Child, target: Target, path: str, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not child.running():
                break
            try:
                status, body = target.get(path, timeout=30)
                if status == 200:
                    return body
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        logs = child.tail()
        container_log = self.state_dir / "container.log"
        if container_log.exists():
            logs += "\n--- container.log ---\n" + "\n".join(
                container_log.read_text(errors="replace").splitlines()[-15:])
        raise BenchError(f"{target.name} did not answer {path} ({last}).\n{logs}")

    # -- the edge and, through it, opencode -------------------------------------------

    def start_edge(self, timeout: float = 90.0) -> None:
        """Start the edge with a pre-registered API key and let it wake its container."""
        self.state_dir.mkdir()
        settings = Settings.from_env({"OCEDGE_STATE_DIR": str(self.state_dir)})
        backends = backends_for_tools(settings)
        new = mint_api_key("bench", backends.pepper)
        asyncio.run(backends.keys.put_key(new.record))

        env = {k: v for k, v in os.environ.items() if not k.startswith("OCEDGE_")}
        env.update(OCEDGE_STATE_DIR=str(self.state_dir),
                   OCEDGE_ADMIN_PASSWORD=secrets.token_urlsafe(18),
                   OCEDGE_LOG_LEVEL="WARNING")
        port = free_port()
        child = self._spawn("edge", [
            sys.executable, "-m", "uvicorn", "edge.app:app", "--host", "127.0.0.1",
            "--port", str(port), *_server_flags(), "--lifespan", "on", "--no-access-log",
            "--log-level", "warning", "--no-proxy-headers"], env)
        edge = Target("edge", port, f"Bearer {new.key}", pids=(child.pid,))
        self._wait(child, edge, "/_edge/health", timeout=15)
        # The first authenticated request wakes the container (local compute).
        self._wait(child, edge, "/global/health", timeout)

        self.targets["edge"] = edge
        self.refresh_direct()

    def refresh_direct(self) -> Target:
        """Point "direct" at the container that runs now: every wake starts a new
        one, on a new port with a new internal password."""
        backends = backends_for_tools(Settings.from_env({"OCEDGE_STATE_DIR": str(self.state_dir)}))
        state = asyncio.run(backends.state.get())
        if state.status != RUNNING or not state.endpoint or not state.credential:
            raise BenchError(f"the container is {state.status}, not running: {state.reason}")
        host, _, upstream_port = state.endpoint.rpartition(":")
        if host != "127.0.0.1":
            raise BenchError(f"the container registered {state.endpoint}, not a loopback address")
        self.targets["direct"] = Target("direct", int(upstream_port),
                                        basic(OPENCODE_USER, state.credential))
        return self.targets["direct"]

    # -- nginx --------------------------------------------------------------------------

    def start_nginx(self) -> None:
        """nginx with Basic auth in front of the same opencode (needs ``start_edge`` first)."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(binary, os.X_OK):
            raise BenchError("nginx is not installed: run `make setup-test` "
                             "(apt-get install nginx)")
        direct = self.targets["direct"]
        prefix = self.root / "nginx"
        (prefix / "tmp").mkdir(parents=True)
        prefix.chmod(0o755)
        user, password = "bench", secrets.token_urlsafe(18)
        digest = hashlib.sha1(password.encode(), usedforsecurity=False).digest()
        htpasswd = prefix / "htpasswd"
        htpasswd.write_text(f"{user}:{{SHA}}{base64.b64encode(digest).decode()}\n")
        htpasswd.chmod(0o644)
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(
            prefix=prefix, port=port, upstream=f"127.0.0.1:{direct.port}",
            authorization=direct.authorization))
        child = self._spawn("nginx", [binary, "-p", str(prefix), "-c", str(conf),
                                      "-e", str(prefix / "error.log")])
        nginx = Target("nginx", port, basic(user, password))
        try:
            self._wait(child, nginx, "/global/health", timeout=15)
        except BenchError as exc:
            error_log = prefix / "error.log"
            detail = error_log.read_text(errors="replace") if error_log.exists() else ""
            raise BenchError(f"{exc}\n{detail[-2000:]}") from None
        # The master forks its worker: count both.
        self.targets["nginx"] = replace(nginx, pids=(child.pid, *children_of(child.pid)))

    def opencode_version(self) -> str:
        _, body = self.targets["direct"].get("/global/health")
        return str(json.loads(body).get("version", "?"))
