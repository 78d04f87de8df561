"""``ocedge keys create|list|revoke``: the API keys that programs log in with."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from infra.cli.console import CliError, emit, when
from infra.cli.options import settings_from_args
from infra.interfaces import ApiKeyRecord

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` in seconds; zero or anything else is refused."""
    match = _DURATION.match(text.lower())
    if not match or int(match.group(1)) == 0:
        raise CliError(f"invalid duration {text!r}: use a number and a unit, e.g. 30d, 12h, 90m")
    return int(match.group(1)) * _UNITS[match.group(2)]


async def create_key(args: argparse.Namespace) -> None:
    """Mint a key and print it, the only time it is ever shown."""
    from infra.backends import backends_for_tools
    from infra.credentials import mint_api_key

    name = args.name.strip()
    if not name or len(name) > 100:
        raise CliError("--name must be 1 to 100 characters")
    backends = backends_for_tools(settings_from_args(args))
    now = time.time()
    # `is not None`: an empty --expires (an unset "$TTL") is refused, not "never".
    expires = now + parse_duration(args.expires) if args.expires is not None else None
    new = mint_api_key(name, backends.pepper, expires=expires, now=now)
    await backends.keys.put_key(new.record)
    emit(args, {"id": new.record.id, "key": new.key, "name": name, "expires": expires},
         f"Created API key {new.record.id} ({name}), expires {when(expires)}.\n"
         f"Copy it now; it is not shown again:\n\n    {new.key}\n")


def _key_status(record: ApiKeyRecord, now: float) -> str:
    if record.revoked is not None:
        return "revoked"
    if record.expires is not None and now >= record.expires:
        return "expired"
    return "active"


async def list_keys(args: argparse.Namespace) -> None:
    """Every key with its dates and status; never a secret."""
    from infra.backends import backends_for_tools

    records = await backends_for_tools(settings_from_args(args)).keys.list_keys()
    now = time.time()
    rows: list[dict[str, Any]] = [
        {"id": r.id, "name": r.name, "created": r.created, "expires": r.expires,
         "last_used": r.last_used, "revoked": r.revoked, "status": _key_status(r, now)}
        for r in records]
    lines = [f"{'ID':<14}{'NAME':<24}{'STATUS':<9}{'CREATED':<22}{'EXPIRES':<22}LAST USED"]
    for r in rows:
        lines.append(f"{r['id']:<14}{r['name'][:23]:<24}{r['status']:<9}"
                     f"{when(r['created']):<22}{when(r['expires']):<22}{when(r['last_used'])}")
    if not rows:
        lines = ["No API keys yet. Create one with: ocedge keys create --name NAME"]
    emit(args, rows, "\n".join(lines))


async def revoke_key(args: argparse.Namespace) -> None:
    from infra.backends import backends_for_tools

    backends = backends_for_tools(settings_from_args(args))
    if not await backends.keys.revoke_key(args.id, time.time()):
        raise CliError(f"no API key with id {args.id!r} (see `ocedge keys list`)")
    emit(args, {"id": args.id, "revoked": True}, f"Revoked API key {args.id}.")


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``keys create|list|revoke`` to ``ocedge``'s subcommands."""
    keys = subparsers.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("create", parents=[common], help="create a key (shown once)")
    p.add_argument("--name", required=True, help="what the key is for")
    p.add_argument("--expires", help="lifetime such as 30d, 12h (default: never)")
    p.set_defaults(run=create_key)
    p = keys.add_parser("list", parents=[common], help="list keys (never shows secrets)")
    p.set_defaults(run=list_keys)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key by id")
    p.add_argument("id")
    p.set_defaults(run=revoke_key)
