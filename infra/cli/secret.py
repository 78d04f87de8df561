"""``ocedge secret set|list|remove``: credentials for the agent's tools (a GITHUB_TOKEN,
an MCP server's key), stored sealed; the container hands them to opencode's environment
when it next starts (:mod:`infra.agent_secrets`)."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from infra.cli.console import CliError, emit, when
from infra.cli.options import settings_from_args
from infra.interfaces import Status


def read_value(name: str) -> str:
    """From the terminal without echo, else all of stdin (a value may span lines: a key
    file); the value is never echoed or logged."""
    if sys.stdin.isatty():
        return getpass.getpass(f"Value of {name}: ")
    return sys.stdin.read()


async def set_secret(args: argparse.Namespace) -> None:
    from infra.agent_secrets import check_name, check_value, seal
    from infra.backends import backends_for_tools

    name = check_name(args.name)
    value = check_value(name, read_value(name))
    backends = backends_for_tools(settings_from_args(args))
    sealing_key = backends.sealing_key(create=True)
    assert sealing_key is not None
    await backends.keys.put_secret(name, seal(sealing_key, name, value), time.time())
    running = (await backends.state.get()).status == Status.RUNNING
    text = f"Stored the secret {name} (sealed)."
    text += (" The workspace is running: the agent sees it from its next start "
             "(`ocedge sleep`, then use it)." if running else
             " The agent sees it as $" + name + " from the workspace's next start.")
    emit(args, {"name": name, "stored": True, "applies": "next start"}, text)


async def list_secrets(args: argparse.Namespace) -> None:
    """Names and dates; never a value, sealed or not."""
    from infra.agent_secrets import CONTAINER_OWN
    from infra.backends import backends_for_tools

    records = [r for r in await backends_for_tools(settings_from_args(args)).keys.list_secrets()
               if not r.name.startswith(CONTAINER_OWN)]  # the container's own: not the agent's
    rows = [{"name": r.name, "created": r.created, "updated": r.updated} for r in records]
    lines = [f"{'NAME':<32}{'CREATED':<22}UPDATED"]
    lines += [f"{r.name:<32}{when(r.created):<22}{when(r.updated)}" for r in records]
    if not rows:
        lines = ["No agent secrets. Add one with: ocedge secret set NAME  (value on stdin)"]
    emit(args, rows, "\n".join(lines))


async def remove_secret(args: argparse.Namespace) -> None:
    from infra.agent_secrets import CONTAINER_OWN
    from infra.backends import backends_for_tools

    name = args.name
    if name.startswith(CONTAINER_OWN):
        raise CliError(f"{name} is not an agent secret (see `ocedge notify remove-webhook`)")
    if not await backends_for_tools(settings_from_args(args)).keys.remove_secret(name):
        raise CliError(f"no secret named {name[:64]!r} is stored (see `ocedge secret list`)")
    emit(args, {"name": name, "removed": True},
         f"Removed the secret {name}. The agent no longer sees it from the workspace's "
         "next start.")


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``secret set|list|remove`` to ``ocedge``'s subcommands."""
    secret = subparsers.add_parser(
        "secret", help="credentials for the agent's tools (GITHUB_TOKEN…), stored sealed"
    ).add_subparsers(dest="secret_command", required=True)
    p = secret.add_parser("set", parents=[common],
                          help="store a secret, its value read from stdin (or a prompt)")
    p.add_argument("name", help="the environment variable the agent sees, e.g. GITHUB_TOKEN")
    p.set_defaults(run=set_secret)
    p = secret.add_parser("list", parents=[common], help="names and dates (never values)")
    p.set_defaults(run=list_secrets)
    p = secret.add_parser("remove", parents=[common], help="delete a secret")
    p.add_argument("name")
    p.set_defaults(run=remove_secret)
