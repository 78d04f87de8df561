"""``ocedge admin``: the admin login.

    ocedge admin password          set the admin password (ends every session)
    ocedge admin totp enable       turn two-factor login on (QR code, first code)
    ocedge admin totp disable      turn it off (a current code or the password)
    ocedge admin logout-all        end every browser session now
    ocedge admin rotate-secrets    replace the server secrets (infra/cli/rotation.py)
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

from infra.cli.console import CliError, emit, progress, read_secret
from infra.cli.options import settings_from_args
from infra.cli.rotation import add_admin_commands as add_rotation_commands


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
         f"Admin password for {settings.admin_user!r} updated; every browser session ended.")


def _qr(uri: str) -> str:
    import segno

    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def _read_line(prompt: str) -> str:
    """A line from the terminal (shown: a code is not a secret worth hiding once
    typed) or from stdin for scripts."""
    if sys.stdin.isatty():
        return input(prompt)
    return sys.stdin.readline().strip()


async def totp_enable(args: argparse.Namespace) -> None:
    """Show a new secret (otpauth:// URI and QR code), confirm a first code, store it."""
    from infra import totp
    from infra.admin import enable_totp
    from infra.backends import backends_for_tools

    settings = settings_from_args(args)
    backends = backends_for_tools(settings)
    if await backends.keys.get_admin() is None:
        raise CliError("there is no admin yet: run `ocedge init` (or `ocedge dev`) first")
    if await backends.keys.get_totp() is not None:
        raise CliError("two-factor login is on already; `ocedge admin totp disable` first "
                       "to replace the secret")
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, settings.admin_user, settings.stack or "local")
    if not getattr(args, "json", False):
        # On the terminal of whoever runs the command, never in a log.
        progress("Scan this with an authenticator app (or enter the secret by hand):\n")
        progress(_qr(uri))
        progress(f"  {uri}\n  secret: {secret}\n")
    else:
        progress(uri)
    code = _read_line("The code the app shows now: ")
    try:
        await enable_totp(backends.keys, backends.session_secret, secret, code)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    emit(args, {"user": settings.admin_user, "totp": True},
         "Two-factor login is on: the login page now asks for a code. Every browser "
         "session ended; API keys work as before.")


async def totp_disable(args: argparse.Namespace) -> None:
    """Turn 2FA off, given a current code or the admin password."""
    from infra.admin import disable_totp
    from infra.backends import backends_for_tools

    settings = settings_from_args(args)
    backends = backends_for_tools(settings)
    proof = read_secret("A current code, or the admin password: ", confirm=False)
    try:
        await disable_totp(backends.keys, backends.session_secret, proof)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    emit(args, {"user": settings.admin_user, "totp": False},
         "Two-factor login is off; every browser session ended.")


async def logout_all(args: argparse.Namespace) -> None:
    """End every browser session (the session epoch moves on)."""
    from infra.admin import logout_all as end_all
    from infra.backends import backends_for_tools

    settings = settings_from_args(args)
    epoch = await end_all(backends_for_tools(settings).keys)
    emit(args, {"session_epoch": epoch},
         "Every browser session has ended (edges notice within OCEDGE_KEY_CACHE_TTL "
         "seconds); API keys are not affected.")


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``admin password|totp|logout-all`` to ``ocedge``'s subcommands."""
    admin = subparsers.add_parser("admin", help="the admin login").add_subparsers(
        dest="admin_command", required=True)
    p = admin.add_parser("password", parents=[common],
                         help="set the admin password (prompt, or one line on stdin)")
    p.set_defaults(run=password)
    totp = admin.add_parser("totp", help="two-factor login (TOTP) for the admin").add_subparsers(
        dest="totp_command", required=True)
    p = totp.add_parser("enable", parents=[common],
                        help="show a new secret as a QR code, confirm a first code, turn 2FA on")
    p.set_defaults(run=totp_enable)
    p = totp.add_parser("disable", parents=[common],
                        help="turn 2FA off (asks for a current code or the admin password)")
    p.set_defaults(run=totp_disable)
    p = admin.add_parser("logout-all", parents=[common],
                         help="end every browser session now (API keys are not affected)")
    p.set_defaults(run=logout_all)
    add_rotation_commands(admin, common)
