"""The S3 workspace: the bucket FUSE-mounted with rclone, opencode's config directory
on it, and opencode's database replicated beside it with Litestream.

    open   mount s3://bucket/prefix (rclone, full VFS cache) and seed opencode's config
           directory on it, while opencode's database is restored from its replica
    run    opencode works on the mount; Litestream replicates the database
    close  (opencode already stopped) Litestream's final sync → rclone's upload queue
           drained → unmount

SQLite never lives on the mount (WAL over S3 FUSE corrupts or locks): the database
stays on local disk and Litestream replicates it beside the workspace prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from container.agent import AgentUser, AgentUserError
from container.opencode_config import CONFIG_HOME, seed_config
from container.workspace.base import WorkspaceError
from container.workspace.fuse import check_fuse
from container.workspace.litestream import Litestream, LitestreamError
from container.workspace.location import S3Location, s3_marker
from container.workspace.rclone import RcloneMount
from container.workspace.tools import go_tool_env, tool_path
from infra.settings import Settings

log = logging.getLogger("ocedge.container")


class S3Workspace:
    """The bucket mounted at the workspace path, opencode's config directory on it and
    its database replicated beside it."""

    def __init__(self, settings: Settings, agent: AgentUser | None = None) -> None:
        self.agent = agent
        self.location = S3Location.from_settings(settings)
        self.path = settings.workspace_path.resolve()
        state_dir = settings.state_dir.resolve()
        self.cache_dir = state_dir / "vfs-cache"
        self.env = go_tool_env(settings.system_env)
        # opencode's data directory; the agent's when opencode runs as its own user.
        self.data_root = settings.opencode_data.resolve()
        self.database = self.data_root / "data" / "opencode" / "opencode.db"
        # Litestream's own state: the supervisor's, not beside the database in the
        # agent's directory.
        self.litestream_meta = state_dir / "opencode-db.litestream"
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
                                 self.env, fusermount, agent=self.agent)
        self.litestream = Litestream(tool_path("litestream"), self.database,
                                     self.location.database, self._run_dir, self.env,
                                     meta=self.litestream_meta,
                                     trusted=self.data_root if self.agent else None)
        if self.agent is not None:
            # opencode (the agent) writes its database and the files beside it.
            try:
                self.agent.own(self.database.parent)
            except AgentUserError as exc:
                raise WorkspaceError(str(exc)) from None
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
        if self.agent is not None and not failed:
            self.agent.hand_over(self.database)
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
        planted = [p for p in (self.config_home, self.config_home / "opencode") if p.is_symlink()]
        if planted:
            # The bucket's files are the agent's: root does not write through its links.
            log.warning("not seeding opencode's config directory: %s is a symlink", planted[0])
            return
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

    async def run(self) -> None:
        """Replicate opencode's database from now on (the files go up as they are written)."""
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
        started = time.monotonic()
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
        log.info("workspace closed in %.1f s (budget %.0f s)%s", time.monotonic() - started,
                 deadline - started, "" if not problems else " with problems")
        return problems
