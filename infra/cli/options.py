"""The options every command takes (--state-dir, --json, --stack) and the settings
they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from infra.settings import Settings


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="state directory (default: OCEDGE_STATE_DIR or .ocedge)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    # SUPPRESS: a --stack given before the subcommand is not reset by its absence after.
    common.add_argument("--stack", default=argparse.SUPPRESS,
                        help="the deployed CloudFormation stack (default: OCEDGE_STACK)")
    return common


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's --state-dir/--stack/... on top."""
    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        changes["state_dir"] = Path(args.state_dir)
    if getattr(args, "stack", None):
        # A stack means the AWS backends, their names read from its outputs.
        changes.update(stack=args.stack, backend="aws")
    for name in ("host", "port"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    return settings.with_overrides(**changes) if changes else settings
