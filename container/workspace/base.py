"""What the container asks of a workspace, whichever kind it is (local or S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class WorkspaceError(RuntimeError):
    """The workspace cannot be opened or saved; the message says what failed and how to fix it."""


class Workspace(Protocol):
    """The directory opencode works in, in three steps around opencode's own life:

    ``open`` before opencode starts, ``run`` once it answers (and ``broken`` while it
    works), ``close`` after it has stopped.
    """

    path: Path

    def describe(self) -> str:
        """Where the workspace lives and whether it is saved anywhere, for the log."""

    async def open(self) -> None:
        """Make the workspace ready for opencode; WorkspaceError, with nothing left
        running, if it cannot be."""

    def opencode_env(self) -> dict[str, str]:
        """Environment variables opencode needs to work on this workspace."""

    async def run(self) -> None:
        """Start what keeps the workspace saved while opencode works; returns once started."""

    async def broken(self) -> str:
        """Wait until the workspace fails under opencode; returns what failed."""

    async def close(self, deadline: float) -> list[str]:
        """Save everything (opencode has stopped) by ``deadline`` (monotonic clock) and
        let go of the workspace; returns what could not be saved."""
