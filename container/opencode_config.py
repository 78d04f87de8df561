"""opencode's config directory in the workspace bucket, initialised copy-if-missing.

It is ``$XDG_CONFIG_HOME/opencode`` with XDG_CONFIG_HOME at ``<workspace>/.config``:
opencode reads its global ``opencode.json`` and ``AGENTS.md`` from there, so both
survive the container, and whatever the user changes in them is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

# Relative to the workspace root.
CONFIG_HOME = ".config"

OPENCODE_JSON = {
    "$schema": "https://opencode.ai/config.json",
    # The image pins opencode; an update at run time would change it under the deployment.
    "autoupdate": False,
}

AGENTS_MD = """\
# Workspace

This project directory is an S3 bucket mounted with FUSE (rclone). It is kept when
the container sleeps; the container itself is disposable.

- Everything under this directory persists. Anything outside it (/tmp, $HOME,
  installed system packages) may be gone after the next sleep.
- Many small file operations are slower here than on a local disk: put build
  output, dependency caches and scratch files that need not survive in /tmp.
- File modes are not stored: every file is executable and chmod changes
  nothing (git sees core.filemode=false here).
"""


def seed_config(config_home: Path) -> list[str]:
    """Create the files that are missing; returns the ones created."""
    directory = config_home / "opencode"
    directory.mkdir(parents=True, exist_ok=True)
    created = []
    for name, text in (("opencode.json", json.dumps(OPENCODE_JSON, indent=2) + "\n"),
                       ("AGENTS.md", AGENTS_MD)):
        path = directory / name
        try:
            # "x": never replace a file the user has (even one made since we looked).
            with open(path, "x") as handle:
                handle.write(text)
        except FileExistsError:
            continue
        created.append(str(path.relative_to(config_home.parent)))
    return created
