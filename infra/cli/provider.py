"""``ocedge provider set|list|remove``: model providers' API keys (BYOK), stored
sealed; the container gives them to opencode when it next starts."""

from __future__ import annotations

import argparse
import time
from typing import Any

from infra.cli.console import CliError, emit, read_secret, when
from infra.cli.options import settings_from_args
from infra.interfaces import Status


async def set_key(args: argparse.Namespace) -> None:
    """Seal and store a provider's API key, read from stdin (or a prompt)."""
    from infra.backends import backends_for_tools
    from infra.providers import check_api_key, check_provider_id, seal

    provider = check_provider_id(args.provider)
    key = check_api_key(provider, read_secret(f"API key for {provider}: ", confirm=False))
    backends = backends_for_tools(settings_from_args(args))
    sealing_key = backends.sealing_key(create=True)
    assert sealing_key is not None
    await backends.keys.put_provider(provider, seal(sealing_key, provider, key), time.time())
    running = (await backends.state.get()).status == Status.RUNNING
    text = f"Stored the API key for {provider} (sealed)."
    text += (" The workspace is running: it gives opencode the new key when it next starts "
             "(`ocedge sleep`, then use it)." if running else
             " The workspace gives it to opencode when it next starts.")
    emit(args, {"provider": provider, "stored": True, "applies": "next start"}, text)


async def list_keys(args: argparse.Namespace) -> None:
    """Provider ids and dates; never a key, sealed or not."""
    from infra.backends import backends_for_tools

    records = await backends_for_tools(settings_from_args(args)).keys.list_providers()
    rows = [{"provider": r.provider, "created": r.created, "updated": r.updated}
            for r in records]
    lines = [f"{'PROVIDER':<24}{'CREATED':<22}UPDATED"]
    lines += [f"{r.provider:<24}{when(r.created):<22}{when(r.updated)}" for r in records]
    if not rows:
        lines = ["No provider keys. Add one with: ocedge provider set PROVIDER  (key on stdin)"]
    emit(args, rows, "\n".join(lines))


async def remove_key(args: argparse.Namespace) -> None:
    from infra.backends import backends_for_tools
    from infra.providers import check_provider_id

    provider = check_provider_id(args.provider)
    if not await backends_for_tools(settings_from_args(args)).keys.remove_provider(provider):
        raise CliError(f"no key is stored for provider {provider!r} (see `ocedge provider list`)")
    emit(args, {"provider": provider, "removed": True},
         f"Removed the key for {provider}. opencode forgets it when the workspace next starts.")


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``provider set|list|remove`` to ``ocedge``'s subcommands."""
    provider = subparsers.add_parser(
        "provider", help="model provider API keys (BYOK), stored sealed").add_subparsers(
        dest="provider_command", required=True)
    p = provider.add_parser("set", parents=[common],
                            help="store a provider's API key, read from stdin (or a prompt)")
    p.add_argument("provider", help="opencode's provider id, e.g. anthropic, openai")
    p.set_defaults(run=set_key)
    p = provider.add_parser("list", parents=[common], help="provider ids and dates (never keys)")
    p.set_defaults(run=list_keys)
    p = provider.add_parser("remove", parents=[common], help="delete a provider's key")
    p.add_argument("provider")
    p.set_defaults(run=remove_key)
