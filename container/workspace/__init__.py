"""The workspace opencode works in: the S3 bucket FUSE-mounted with rclone
(:mod:`.s3`), or, only when asked for (``OCEDGE_WORKSPACE=local``), a plain local
directory (:mod:`.local`). Both are a :class:`Workspace`; the container sees nothing
else.

    base        the Workspace interface and its error
    local       LocalWorkspace
    s3          S3Workspace: rclone's mount + Litestream's replica, in order
    rclone      the mount (RcloneMount)          fuse    the kernel's side of it
    litestream  opencode's database replica      location  where in S3 both live
    tools       finding rclone and Litestream, and their environment
"""

from __future__ import annotations

from container.agent import AgentUser
from container.workspace.base import Workspace, WorkspaceError
from container.workspace.local import LocalWorkspace
from container.workspace.s3 import S3Workspace
from infra.settings import Settings

__all__ = ["LocalWorkspace", "S3Workspace", "Workspace", "WorkspaceError", "open_workspace"]


def open_workspace(settings: Settings, agent: AgentUser | None = None) -> Workspace:
    """The workspace the settings ask for (not opened yet), for opencode running as
    ``agent`` (None: as the container's own user)."""
    if settings.workspace == "s3":
        return S3Workspace(settings, agent)
    if settings.s3_bucket:
        # S3 is half configured: running on a local directory would lose the work.
        raise WorkspaceError(
            f"OCEDGE_S3_BUCKET is set ({settings.s3_bucket}) but OCEDGE_WORKSPACE is 'local': "
            f"set OCEDGE_WORKSPACE=s3 to keep the workspace in the bucket, or unset "
            f"OCEDGE_S3_BUCKET for a local workspace.")
    return LocalWorkspace(settings)
