"""The installed ``ocedge`` console script, run in its own process as a user runs it:
what these tests prove is the command line itself, entry point and all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OCEDGE = Path(sys.executable).parent / "ocedge"


def ocedge(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           stdin: str | None = None, timeout: float = 60,
           inherit: bool = True) -> subprocess.CompletedProcess[str]:
    """``ocedge ARGV``, with the test's environment minus every ``OCEDGE_*`` setting (so
    nothing from the developer's shell leaks in) plus ``env`` — or, without
    ``inherit``, with exactly ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OCEDGE_")} if inherit else {}
    return subprocess.run([str(OCEDGE), *argv], cwd=cwd, env=base | (env or {}), input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)
