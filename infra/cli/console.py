"""What a command shows and asks on the console: user-facing errors, text or
``--json`` output, times, and secrets read without echo."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from typing import Any


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the human-readable ``text``."""
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text, flush=True)


def progress(text: str) -> None:
    """A line for the person watching (stderr): stdout stays the command's result."""
    print(text, file=sys.stderr, flush=True)


def when(ts: float | None) -> str:
    """A timestamp as a table shows it; ``-`` for never."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def read_secret(prompt: str, confirm: bool) -> str:
    """From the terminal without echo (twice with ``confirm``), else one line of stdin,
    so that scripts can pipe it in."""
    if sys.stdin.isatty():
        value = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != value:
            raise CliError("the two entries differ")
        return value
    return sys.stdin.readline().rstrip("\r\n")
