"""A git server over HTTP with Basic auth, as GitHub is for a token: git's own
``git http-backend`` (CGI) behind a small WSGI server on 127.0.0.1.

    with git_server(tmp_path, token="ghp_…") as server:
        server.url("repo")          # http://127.0.0.1:PORT/repo.git, a bare repository
        server.log("repo")          # its commits' subjects, newest first

Every request without the token as its Basic password gets 401 and a Basic challenge,
as GitHub answers; ``refused`` counts them.
"""

from __future__ import annotations

import base64
import hmac
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from infra.net import free_port

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class GitServer:
    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.token = token
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.refused = 0
        self.pushes = 0
        self.httpd = make_server("127.0.0.1", self.port, self._app, server_class=_Server,
                                 handler_class=_Quiet)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def create(self, name: str) -> str:
        """A bare repository ``name`` with one commit on ``main``; its URL."""
        bare = self.root / f"{name}.git"
        seed = self.root / f"{name}-seed"
        subprocess.run(["git", "init", "--bare", "-b", "main", str(bare)], check=True,
                       capture_output=True)
        subprocess.run(["git", "init", "-b", "main", str(seed)], check=True, capture_output=True)
        (seed / "README").write_text("seed\n")
        env = {**os.environ, **GIT_ENV}
        for argv in (["add", "README"], ["commit", "-m", "seed"],
                     ["push", str(bare), "main"]):
            subprocess.run(["git", *argv], cwd=seed, env=env, check=True, capture_output=True)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}.git"

    def log(self, name: str) -> list[str]:
        done = subprocess.run(["git", "--git-dir", str(self.root / f"{name}.git"), "log",
                               "--format=%s", "main"], capture_output=True, text=True, check=True)
        return done.stdout.split()

    def _authorised(self, environ: dict[str, Any]) -> bool:
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        if not header.startswith("Basic "):
            return False
        try:
            _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(password.encode(), self.token.encode())

    def _app(self, environ: dict[str, Any],
             start: Callable[[str, list[tuple[str, str]]], Any]) -> Iterable[bytes]:
        if not self._authorised(environ):
            self.refused += 1
            start("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'),
                                       ("Content-Length", "0")])
            return [b""]
        if str(environ.get("PATH_INFO", "")).endswith("/git-receive-pack"):
            self.pushes += 1
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {"GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "REMOTE_USER": "token", "REMOTE_ADDR": "127.0.0.1", "PATH": os.defpath,
               "GATEWAY_INTERFACE": "CGI/1.1"}
        for name in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
                     "CONTENT_LENGTH", "HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL"):
            if environ.get(name):
                cgi[name] = str(environ[name])
        if "HTTP_GIT_PROTOCOL" in cgi:
            cgi["GIT_PROTOCOL"] = cgi["HTTP_GIT_PROTOCOL"]
        done = subprocess.run(["git", "http-backend"], input=body, env=cgi,
                              capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status = "200 OK"
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name, value.strip()))
        start(status, headers)
        return [payload]


@contextmanager
def git_server(root: Path, token: str) -> Iterator[GitServer]:
    root.mkdir(parents=True, exist_ok=True)
    server = GitServer(root, token)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=10)
