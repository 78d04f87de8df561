"""``ocedge init [--stack NAME]``: make a deployment usable — the server secrets, the
admin password (prompt, or one line on stdin) and a first API key."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from infra.cli.console import CliError, emit, read_secret
from infra.cli.options import settings_from_args

FIRST_KEY_NAME = "first key (ocedge init)"


async def init(args: argparse.Namespace) -> None:
    """Make a deployment usable: secrets, admin password, a first API key."""
    from infra.admin import check_admin_password, set_admin_password
    from infra.backends import backends_for_tools
    from infra.credentials import mint_api_key

    settings = settings_from_args(args)
    outputs: dict[str, str] = {}
    if settings.stack:
        from infra.aws.stack import apply_outputs, stack_outputs

        outputs = stack_outputs(settings.stack, settings.aws_region, settings.aws_endpoint)
        settings = apply_outputs(settings, outputs)
    backends = backends_for_tools(settings)
    # Reach both tables before asking for anything: a wrong stack fails here, clearly.
    await backends.state.get()
    keys = await backends.keys.list_keys()

    password = read_secret(f"Admin password for {settings.admin_user!r}: ", confirm=True)
    try:
        check_admin_password(password)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    created = await asyncio.to_thread(backends.secrets.ensure)
    await set_admin_password(settings, backends.keys, password)

    now = time.time()
    new = None
    if not any(record.usable_at(now) for record in keys):
        new = mint_api_key(FIRST_KEY_NAME, backends.pepper, now=now)
        await backends.keys.put_key(new.record)

    source = backends.secrets.source
    where = " and ".join(source.where(name) for name in ("edge", "container"))
    web_url = outputs.get("WebUrl") or settings.stream_url
    api_url = outputs.get("ApiUrl")
    data = {"stack": settings.stack, "secrets": where, "secrets_created": created,
            "admin_user": settings.admin_user,
            "api_key": {"id": new.record.id, "key": new.key} if new else None,
            "web_url": web_url, "api_url": api_url}
    lines = [f"opencode-edge is initialised{f' (stack {settings.stack})' if settings.stack else ''}.",
             f"  secrets:  {'created' if created else 'kept the existing'} {where}",
             f"  browser:  log in as {settings.admin_user!r} with the password you just set"
             + (f" at {web_url}" if web_url else "")]
    if new is not None:
        base = (api_url or web_url or "https://<your edge>/").rstrip("/")
        lines += ["  API key (shown only this once; copy it now):", "", f"      {new.key}", "",
                  f"  try:      curl -H 'Authorization: Bearer <key>' {base}/global/health"]
    else:
        lines.append("  API keys exist already; make another with `ocedge keys create --name NAME`")
    emit(args, data, "\n".join(lines))


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``init`` to ``ocedge``'s subcommands."""
    p = subparsers.add_parser(
        "init", parents=[common],
        help="first run: admin password (prompt or stdin), server secrets, first API key")
    p.set_defaults(run=init)
