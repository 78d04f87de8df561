"""``ocedge admin password``: the password browser logins use."""

from __future__ import annotations

import argparse
from typing import Any

from infra.cli.console import CliError, emit, read_secret
from infra.cli.options import settings_from_args


async def password(args: argparse.Namespace) -> None:
    """Set the admin password, from a prompt (asked twice) or one line of stdin."""
    from infra.admin import check_admin_password, set_admin_password
    from infra.backends import backends_for_tools

    new = read_secret("New admin password: ", confirm=True)
    try:
        check_admin_password(new)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    settings = settings_from_args(args)
    await set_admin_password(settings, backends_for_tools(settings).keys, new)
    emit(args, {"user": settings.admin_user, "updated": True},
         f"Admin password for {settings.admin_user!r} updated.")


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``admin password`` to ``ocedge``'s subcommands."""
    admin = subparsers.add_parser("admin", help="the admin login").add_subparsers(
        dest="admin_command", required=True)
    p = admin.add_parser("password", parents=[common],
                         help="set the admin password (prompt, or one line on stdin)")
    p.set_defaults(run=password)
