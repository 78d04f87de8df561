"""An emulated S3 for ``ocedge dev --s3 emulated``: a moto server on 127.0.0.1 whose
buckets are kept on disk, so the workspace survives restarts of ``ocedge dev``.

moto keeps everything in memory. Its request recorder could replay a session, but a
replay re-runs every request ever made (reads included) and cannot replay multipart
uploads (the upload ids differ the second time), which Litestream uses for larger
snapshots. So the server runs moto's own WSGI app behind a small middleware instead:
after every successful write request (PUT, POST, DELETE), and before the client gets
its answer, the buckets it may have changed are compared with a SQLite file and the
differences written. At start-up that file is loaded back into moto before the
first request is served. A client that was told "200 OK" can rely on the object
being on disk, even if ``ocedge dev`` is killed right after.

    python -m infra.emulated_s3 --root DIR --port PORT --bucket NAME
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from infra.net import free_port

log = logging.getLogger("ocedge.emulated_s3")

DEFAULT_BUCKET = "ocedge-workspace"
REGION = "us-east-1"
# moto accepts any credentials; the workspace tools only need some to sign with. Fixed
# values, so a user's real AWS credentials are never sent to the emulator.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "emulated", "AWS_SECRET_ACCESS_KEY": "emulated",
               "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
               # No instance-metadata probing for credentials on a developer machine.
               "AWS_EC2_METADATA_DISABLED": "true"}

_SCHEMA = """
create table if not exists buckets (name text primary key, region text not null);
create table if not exists objects (
    bucket text not null, key text not null, etag text, last_modified text not null,
    metadata text not null, body blob not null, primary key (bucket, key));
"""

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


# -- the server process --------------------------------------------------------------


def _fingerprint(key: Any) -> tuple[Any, ...]:
    # A new upload or a copy makes a new key object; metadata can change in place.
    return (id(key), key.last_modified, tuple(sorted(key.metadata.items())))


class BucketFile:
    """The buckets of one moto S3 backend, mirrored to a SQLite file."""

    def __init__(self, path: Path, backend: Any) -> None:
        self.backend = backend
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("pragma journal_mode=wal")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()
        self._known: dict[str, dict[str, tuple[Any, ...]]] = {}

    def load(self) -> int:
        """Put every stored bucket and object into moto; returns the object count."""
        count = 0
        for name, region in self.db.execute("select name, region from buckets"):
            self.backend.create_bucket(name, region)
            self._known[name] = {}
        rows = self.db.execute(
            "select bucket, key, etag, last_modified, metadata, body from objects")
        for bucket, name, etag, modified, metadata, body in rows:
            # moto quotes the etag it hands out, and would quote a quoted one again.
            key = self.backend.put_object(bucket, name, bytes(body), etag=etag.strip('"'),
                                          disable_notification=True)
            key.set_metadata(json.loads(metadata), replace=True)
            key.last_modified = dt.datetime.fromisoformat(modified)
            self._known[bucket][name] = _fingerprint(key)
            count += 1
        return count

    def save(self, only: str | None = None) -> None:
        """Write what changed in bucket ``only`` (or in every bucket) since the last save."""
        with self.lock:
            buckets = dict(self.backend.buckets)
            self.db.execute("begin")
            try:
                for name in set(self._known) - set(buckets):
                    self.db.execute("delete from objects where bucket = ?", (name,))
                    self.db.execute("delete from buckets where name = ?", (name,))
                    del self._known[name]
                for name, bucket in buckets.items():
                    if name not in self._known:
                        self.db.execute("insert or replace into buckets values (?, ?)",
                                        (name, bucket.region_name))
                        self._known[name] = {}
                    if only is None or name == only:
                        self._save_bucket(name, bucket)
                self.db.execute("commit")
            except BaseException:
                self.db.execute("rollback")
                raise

    def _save_bucket(self, name: str, bucket: Any) -> None:
        known = self._known[name]
        current = {key_name: key for key_name, key in bucket.keys.items()
                   if hasattr(key, "etag")}  # delete markers have no content
        for gone in set(known) - set(current):
            self.db.execute("delete from objects where bucket = ? and key = ?", (name, gone))
            del known[gone]
        for key_name, key in current.items():
            fingerprint = _fingerprint(key)
            if known.get(key_name) == fingerprint:
                continue
            self.db.execute(
                "insert or replace into objects values (?, ?, ?, ?, ?, ?)",
                (name, key_name, key.etag, key.last_modified.isoformat(),
                 json.dumps(dict(key.metadata)), key.value))
            known[key_name] = fingerprint


class SavingMiddleware:
    """Save the buckets after every successful write, before the client hears of it."""

    def __init__(self, app: WsgiApp, buckets: BucketFile) -> None:
        self.app = app
        self.buckets = buckets

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        statuses: list[str] = []

        def remember(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        body = self.app(environ, remember)
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("PUT", "POST", "DELETE") and statuses and statuses[-1].startswith("2"):
            # Path-style requests name their bucket first; anything else saves them all.
            path = str(environ.get("PATH_INFO", "")).lstrip("/")
            bucket = path.split("/", 1)[0] or None
            if bucket is not None and bucket.startswith("moto-api"):
                bucket = None
            self.buckets.save(bucket)
        return body


def _exit_with(parent: int) -> None:
    """Stop when ``ocedge dev`` is gone, however it went (even SIGKILL)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        log.info("ocedge dev (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(root: Path, port: int, bucket: str) -> None:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.s3.models import s3_backends
    from werkzeug.serving import run_simple

    root.mkdir(parents=True, exist_ok=True)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    buckets = BucketFile(root / "buckets.sqlite", backend)
    count = buckets.load()
    if bucket not in backend.buckets:
        backend.create_bucket(bucket, REGION)
        buckets.save(bucket)
    log.info("emulated S3 on 127.0.0.1:%d: %d objects loaded from %s", port, count, root)
    app = SavingMiddleware(DomainDispatcherApplication(create_backend_app), buckets)
    run_simple("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.emulated_s3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="where the buckets are kept")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket to create if missing")
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per request would bury what matters.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _exit)
    if args.parent:
        _exit_with(args.parent)
    serve(args.root, args.port, args.bucket)


# -- the handle `ocedge dev` holds ---------------------------------------------------


class EmulatedS3:
    """The emulator as a child process of ``ocedge dev``, its data under ``state_dir``."""

    def __init__(self, state_dir: Path, bucket: str = DEFAULT_BUCKET) -> None:
        self.root = state_dir.resolve() / "emulated-s3"
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_file = state_dir.resolve() / "emulated-s3.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> EmulatedS3:
        import httpx

        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | CREDENTIALS
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "infra.emulated_s3", "--root", str(self.root),
                 "--port", str(self.port), "--bucket", self.bucket,
                 "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                # Not in the terminal's process group: Ctrl-C stops `ocedge dev`, which
                # then stops the container (whose uploads need S3) before the emulator.
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the emulated S3 exited (status {self.process.returncode}); "
                                   f"see {self.log_file}")
            try:
                with httpx.Client(trust_env=False, timeout=1) as client:
                    if client.head(f"{self.endpoint}/{self.bucket}").status_code == 200:
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the emulated S3 did not start within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def settings_changes(self, system_env: Mapping[str, str]) -> dict[str, Any]:
        """The settings that put a deployment's workspace on this emulator."""
        return {"workspace": "s3", "s3_bucket": self.bucket, "s3_endpoint": self.endpoint,
                "system_env": {k: v for k, v in system_env.items() if not k.startswith("AWS_")}
                | CREDENTIALS}


if __name__ == "__main__":
    main()
