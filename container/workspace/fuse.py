"""The kernel's side of the S3 workspace: is FUSE usable here, what is mounted where,
and detaching a mount its process no longer serves."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

from container.workspace.base import WorkspaceError

FUSE_DEVICE = Path("/dev/fuse")
FUSERMOUNTS = ("fusermount3", "fusermount")
FIX_FUSE = ("Run the container with `--device /dev/fuse --cap-add SYS_ADMIN` (on a machine: "
            "`apt-get install fuse3`), or set OCEDGE_WORKSPACE=local for a workspace that is "
            "NOT saved to S3.")

_OCTAL = re.compile(r"\\([0-7]{3})")


def check_fuse(search_path: str, device: Path = FUSE_DEVICE) -> str:
    """The fusermount helper to unmount with; WorkspaceError if FUSE cannot work here."""
    if not device.exists():
        raise WorkspaceError(
            f"the workspace is on S3 (OCEDGE_WORKSPACE=s3) but FUSE is not available: "
            f"{device} does not exist. {FIX_FUSE}")
    for name in FUSERMOUNTS:
        found = shutil.which(name, path=search_path)
        if found:
            return found
    raise WorkspaceError(
        f"the workspace is on S3 (OCEDGE_WORKSPACE=s3) but FUSE is not available: neither "
        f"{' nor '.join(FUSERMOUNTS)} is on PATH. {FIX_FUSE}")


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


async def unmount(fusermount: str, mountpoint: Path, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    """``fusermount -u`` (``-z``: detach now, even while something has it open)."""
    argv = [fusermount, "-u", *(["-z"] if lazy else []), str(mountpoint)]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                   check=False, timeout=10)
