"""``ocedge init`` and ``ocedge provider``: a deployment's first run, and its model keys.

    ocedge init [--stack NAME]           set the admin password (prompt, or one line on
                                         stdin), create the server secrets, print a first
                                         API key
    ocedge provider set PROVIDER         store a provider's API key (read from stdin),
                                         sealed; the container gives it to opencode
    ocedge provider list                 provider ids and dates (never keys)
    ocedge provider remove PROVIDER

With ``--stack NAME`` (or ``OCEDGE_STACK``) the commands work on that AWS stack;
otherwise on the backend the settings name (local by default, ``--state-dir``).
:func:`add_commands` adds them to ``ocedge``'s parser.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from infra.interfaces import BackendError
from infra.settings import Settings, SettingsError

FIRST_KEY_NAME = "first key (ocedge init)"


def _fail(message: str) -> Exception:
    # infra.cli imports this module while it builds its parser: import it late.
    from infra.cli import CliError

    return CliError(message)


def _settings(args: argparse.Namespace) -> Settings:
    from infra.cli import settings_from_args

    return settings_from_args(args)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text, flush=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _clear_errors(command: Callable[[argparse.Namespace], Awaitable[None]]
                  ) -> Callable[[argparse.Namespace], Awaitable[None]]:
    """Backend and input errors become CLI errors: one line, no traceback."""
    from infra.providers import ProviderKeyError

    async def run(args: argparse.Namespace) -> None:
        try:
            await command(args)
        except (BackendError, ProviderKeyError, SettingsError) as exc:
            raise _fail(str(exc)) from None

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run


def _read_secret(prompt: str, confirm: bool) -> str:
    """From the terminal without echo (twice with ``confirm``), else one line of stdin."""
    if sys.stdin.isatty():
        value = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != value:
            raise _fail("the two entries differ")
        return value
    return sys.stdin.readline().rstrip("\r\n")


# -- init --------------------------------------------------------------------------


async def init(args: argparse.Namespace) -> None:
    """Make a deployment usable: secrets, admin password, a first API key."""
    from infra.admin import set_admin_password
    from infra.backends import open_backends
    from infra.credentials import mint_api_key

    settings = _settings(args)
    outputs: dict[str, str] = {}
    if settings.stack:
        from infra.aws.stack import apply_outputs, stack_outputs

        outputs = stack_outputs(settings.stack, settings.aws_region, settings.aws_endpoint)
        settings = apply_outputs(settings, outputs)
    backends = open_backends(settings)
    # Reach both tables before asking for anything: a wrong stack fails here, clearly.
    await backends.state.get()
    keys = await backends.keys.list_keys()

    password = _read_secret(f"Admin password for {settings.admin_user!r}: ", confirm=True)
    if len(password) < 12:
        raise _fail("the admin password must be at least 12 characters")
    created = await asyncio.to_thread(backends.secrets.ensure)
    await set_admin_password(settings, backends.keys, password)

    now = time.time()
    new = None
    if not any(record.usable_at(now) for record in keys):
        new = mint_api_key(FIRST_KEY_NAME, backends.pepper, now=now)
        await backends.keys.put_key(new.record)

    where = settings.secrets_parameter if settings.backend == "aws" else str(
        settings.state_dir.resolve())
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
    _emit(args, data, "\n".join(lines))


# -- provider ----------------------------------------------------------------------


async def provider_set(args: argparse.Namespace) -> None:
    """Seal and store a provider's API key, read from stdin (or a prompt)."""
    from infra.backends import open_backends
    from infra.providers import check_api_key, check_provider_id, seal

    provider = check_provider_id(args.provider)
    key = check_api_key(provider, _read_secret(f"API key for {provider}: ", confirm=False))
    backends = open_backends(_settings(args))
    sealing_key = backends.sealing_key(create=True)
    assert sealing_key is not None
    await backends.keys.put_provider(provider, seal(sealing_key, provider, key), time.time())
    running = (await backends.state.get()).status == "running"
    text = f"Stored the API key for {provider} (sealed)."
    text += (" The workspace is running: it gives opencode the new key when it next starts "
             "(`ocedge sleep`, then use it)." if running else
             " The workspace gives it to opencode when it next starts.")
    _emit(args, {"provider": provider, "stored": True, "applies": "next start"}, text)


async def provider_list(args: argparse.Namespace) -> None:
    """Provider ids and dates; never a key, sealed or not."""
    from infra.backends import open_backends

    records = await open_backends(_settings(args)).keys.list_providers()
    rows = [{"provider": r.provider, "created": r.created, "updated": r.updated}
            for r in records]
    lines = [f"{'PROVIDER':<24}{'CREATED':<22}UPDATED"]
    lines += [f"{r.provider:<24}{_when(r.created):<22}{_when(r.updated)}" for r in records]
    if not rows:
        lines = ["No provider keys. Add one with: ocedge provider set PROVIDER  (key on stdin)"]
    _emit(args, rows, "\n".join(lines))


async def provider_remove(args: argparse.Namespace) -> None:
    from infra.backends import open_backends
    from infra.providers import check_provider_id

    provider = check_provider_id(args.provider)
    if not await open_backends(_settings(args)).keys.remove_provider(provider):
        raise _fail(f"no key is stored for provider {provider!r} (see `ocedge provider list`)")
    _emit(args, {"provider": provider, "removed": True},
          f"Removed the key for {provider}. opencode forgets it when the workspace next starts.")


# -- parser ------------------------------------------------------------------------


def add_commands(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Add ``init`` and ``provider`` to ``ocedge``'s subcommands.

    ``common_parent`` carries --state-dir and --json; --stack is added here unless it
    already has it. SUPPRESS keeps a --stack given before the subcommand.
    """
    parents = [common_parent]
    if "--stack" not in common_parent._option_string_actions:
        stack = argparse.ArgumentParser(add_help=False)
        stack.add_argument("--stack", default=argparse.SUPPRESS,
                           help="AWS CloudFormation stack to work on (default: OCEDGE_STACK)")
        parents.append(stack)

    p = subparsers.add_parser(
        "init", parents=parents,
        help="first run: admin password (prompt or stdin), server secrets, first API key")
    p.set_defaults(run=_clear_errors(init))

    provider = subparsers.add_parser(
        "provider", help="model provider API keys (BYOK), stored sealed").add_subparsers(
        dest="provider_command", required=True)
    p = provider.add_parser("set", parents=parents,
                            help="store a provider's API key, read from stdin (or a prompt)")
    p.add_argument("provider", help="opencode's provider id, e.g. anthropic, openai")
    p.set_defaults(run=_clear_errors(provider_set))
    p = provider.add_parser("list", parents=parents, help="provider ids and dates (never keys)")
    p.set_defaults(run=_clear_errors(provider_list))
    p = provider.add_parser("remove", parents=parents, help="delete a provider's key")
    p.add_argument("provider")
    p.set_defaults(run=_clear_errors(provider_remove))
