"""The local workspace: a directory on local disk, saved nowhere else. Only when asked
for (``OCEDGE_WORKSPACE=local``)."""

from __future__ import annotations

import asyncio
import json

from container.workspace.base import WorkspaceError
from container.workspace.location import s3_marker
from infra.settings import Settings


class LocalWorkspace:
    """A directory on local disk: nothing is saved anywhere else."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.workspace_path.resolve()
        self.marker = s3_marker(settings)

    def describe(self) -> str:
        return (f"local directory {self.path} (NOT saved to S3: OCEDGE_WORKSPACE=local; "
                f"set OCEDGE_WORKSPACE=s3 and OCEDGE_S3_BUCKET to keep it in a bucket)")

    async def open(self) -> None:
        """The directory, made if missing; refused where the state directory's workspace
        lives in S3 (opencode would start on an empty stand-in)."""
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

    async def run(self) -> None:
        return None

    async def broken(self) -> str:
        """Never: a directory does not fail under opencode."""
        await asyncio.Event().wait()
        return ""

    async def close(self, deadline: float) -> list[str]:
        return []
