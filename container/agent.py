"""The agent's own user: opencode, and everything it runs, apart from the container.

The container (``python -m container``, "the supervisor") holds the deployment's AWS
access: it mounts the bucket, replicates the database, writes the state item and
opens the sealed provider keys. opencode runs whatever a prompt — or a page or package
it reads — asks, so on AWS it runs as a user of its own (``OCEDGE_AGENT_USER``, set by
the image) that

- has no AWS credentials: its environment carries no ``AWS_*`` variable and its HOME
  is its own (:func:`container.opencode.opencode_environment`);
- cannot reach the instance metadata service (where the instance role's credentials
  are): the host's firewall rejects its uid's traffic to 169.254.169.254 and
  fd00:ec2::254 before the container starts (``deploy/host/agent-firewall.nft``);
- cannot read the supervisor's files, nor signal or trace its processes (another uid):
  the supervisor's umask is 077, the state directory is root's and traversable only
  (0711), and each of the supervisor's entries in it — the local stores and secrets,
  rclone's cache, Litestream's state, the provider-id marker — is made root's and
  private here (:meth:`AgentUser.prepare`);
- gains nothing from setuid programs (no_new_privs) and dies with the container.

Who owns what:

    the workspace (the mount, or the local directory)    the agent (every file on the
                                                         S3 mount shows as its own)
    opencode's data directory: HOME, XDG dirs and        the agent: opencode.db is
      opencode.db (its sessions)                         opencode's own working file;
                                                         Litestream (root) reads and
                                                         replicates it
    the state directory itself, local stores, secrets,   root (the supervisor), 0700/0600
      rclone's VFS cache, Litestream's metadata and
      configuration, run directories, TLS key (memory)

Without ``OCEDGE_AGENT_USER`` (local mode: ``ocedge dev``) opencode runs as the
container's own user — as you. With it the container must run as root, since only
root can start a process as another user; anything else is refused rather than run
unisolated.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import signal
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings

log = logging.getLogger("ocedge.container")


class AgentUserError(RuntimeError):
    """The agent's user cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class AgentUser:
    """The user opencode runs as: ``uid``/``gid``, and ``name`` when it has one."""

    uid: int
    gid: int
    name: str | None = None

    @property
    def groups(self) -> list[int]:
        """Its supplementary groups (from /etc/group for a named user; none for a
        bare uid), so it never keeps root's."""
        if self.name is None:
            return []
        return [g for g in os.getgrouplist(self.name, self.gid) if g != 0]

    def __str__(self) -> str:
        return f"{self.name or 'uid'} ({self.uid}:{self.gid})"

    def own(self, path: Path) -> Path:
        """``path`` as a directory of the agent's: made if missing (and any missing
        parent below an existing one); an existing tree that someone else owns is
        handed over whole (a state directory from an image without the agent's user)."""
        self._refuse_planted_links(path)
        missing = []
        probe = path
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        path.mkdir(parents=True, exist_ok=True)
        for made in missing:
            os.chown(made, self.uid, self.gid)
            made.chmod(0o700)  # the agent's alone (root needs no permission)
        top = path.lstat()
        if top.st_uid != self.uid and not path.is_symlink():
            _chown_tree(path, self.uid, self.gid)
        return path

    def _refuse_planted_links(self, path: Path) -> None:
        """AgentUserError if a component of ``path`` is a symlink in a directory of the
        agent's: the supervisor (root) never follows a link the agent could have made."""
        for component in [*reversed(path.parents), path]:
            if component.is_symlink() and component.parent.lstat().st_uid == self.uid:
                raise AgentUserError(f"{component} is a symlink in the agent's directory; "
                                     f"the container does not follow it (remove it)")

    def hand_over(self, path: Path) -> None:
        """One file the supervisor made for the agent (a restored database)."""
        if path.exists() and not path.is_symlink():
            os.chown(path, self.uid, self.gid)

    def prepare(self, settings: Settings) -> None:
        """Make the supervisor's files private and the agent's directories its own;
        call before anything else writes (it sets the supervisor's umask)."""
        os.umask(0o077)
        state_dir = settings.state_dir.resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chown(state_dir, 0, 0)
        state_dir.chmod(0o711)
        data, workspace = settings.opencode_data.resolve(), settings.workspace_path.resolve()
        for entry in state_dir.iterdir():
            if any(entry == mine or entry in mine.parents for mine in (data, workspace)):
                if entry not in (data, workspace):  # on the way to one of the agent's
                    entry.chmod(0o711)
                continue
            _make_private(entry)
        self.own(data)
        # opencode's HOME and XDG directories, and its database's: made (or checked) now,
        # while none of the agent's processes runs.
        for name in ("home", "data", "config", "state", "cache", "data/opencode"):
            self.own(data / name)
        # An S3 workspace's files are the agent's through the mount (rclone --uid);
        # its mount point may still hold a dead mount, which the workspace clears.
        if settings.workspace != "s3":
            self.own(workspace)

    def end_processes(self) -> int:
        """SIGKILL every process still running as the agent (what opencode left
        behind, detached or not); the number killed. Called once opencode has
        stopped, so nothing of the agent's touches the workspace while it is saved."""
        killed = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}").st_uid != self.uid:
                    continue
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except (FileNotFoundError, ProcessLookupError):
                continue
        if killed:
            log.info("ended %d leftover process(es) of the agent", killed)
        return killed


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(base, name), uid, gid, follow_symlinks=False)


def _make_private(entry: Path) -> None:
    """One of the supervisor's entries: root's (the whole tree, if it was not) and
    closed to everyone else."""
    info = entry.lstat()
    if info.st_uid != 0 or info.st_gid != 0:
        _chown_tree(entry, 0, 0)
    if not entry.is_symlink():
        entry.chmod(info.st_mode & 0o700)


def agent_user(settings: Settings, euid: int | None = None) -> AgentUser | None:
    """The user to run opencode as; None: as the container's own user.

    AgentUserError when one is configured but cannot be used: it does not exist, or
    the container does not run as root (so it could not switch to it).
    """
    euid = os.geteuid() if euid is None else euid
    wanted = settings.agent_user
    if not wanted:
        if euid == 0:
            log.warning("opencode runs as root, with the container's own access (AWS "
                        "credentials, its files): set OCEDGE_AGENT_USER to isolate it")
        return None
    agent = _resolve(wanted)
    if euid != 0:
        raise AgentUserError(
            f"OCEDGE_AGENT_USER={wanted} needs the container to run as root, to start "
            f"opencode as that user; it runs as uid {euid}. Run it as root (the image "
            f"does), or unset OCEDGE_AGENT_USER to run opencode as this user.")
    return agent


def _resolve(wanted: str) -> AgentUser:
    if wanted[0].isdigit():
        uid_text, _, gid_text = wanted.partition(":")
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
        try:
            name: str | None = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None  # a bare uid is fine: the agent needs no entry in /etc/passwd
        return AgentUser(uid, gid, name)
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        raise AgentUserError(
            f"OCEDGE_AGENT_USER={wanted}: there is no such user here. Create it (the "
            f"image does), or give a numeric uid[:gid].") from None
    with contextlib.suppress(KeyError):
        grp.getgrgid(entry.pw_gid)
    return AgentUser(entry.pw_uid, entry.pw_gid, entry.pw_name)
