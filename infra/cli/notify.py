"""``ocedge notify set-webhook|remove-webhook|test``: where the container's notices go
(:mod:`infra.notify`), and a sample through every channel, so you see what arrives
before the agent has anything to tell.

``OCEDGE_NOTIFY_URL`` sets a webhook where you set the container's environment (local
mode); ``set-webhook`` stores one sealed in the key store, for a deployment whose
environment is the stack's (a webhook URL usually carries its token: it is never
shown, logged or put in the template)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from infra.cli.console import CliError, emit, progress, read_secret
from infra.cli.options import settings_from_args


async def set_webhook(args: argparse.Namespace) -> None:
    from infra.agent_secrets import seal
    from infra.backends import backends_for_tools
    from infra.notify import WEBHOOK_ITEM

    settings = settings_from_args(args)
    url = read_secret("Webhook URL: ", confirm=False).strip()
    # Checked as the setting would be (the message never quotes the URL).
    settings.with_overrides(notify_url=url, notify_format=args.format)
    backends = backends_for_tools(settings)
    sealing_key = backends.sealing_key(create=True)
    assert sealing_key is not None
    value = json.dumps({"url": url, "format": args.format})
    await backends.keys.put_secret(WEBHOOK_ITEM, seal(sealing_key, WEBHOOK_ITEM, value),
                                   time.time())
    note = " (OCEDGE_NOTIFY_URL is set here and wins over it)" if settings.notify_url else ""
    emit(args, {"webhook": args.format, "stored": True, "applies": "next start"},
         f"Stored the webhook ({args.format}, sealed){note}. The workspace sends notices "
         "to it from its next start; try it with `ocedge notify test`.")


async def remove_webhook(args: argparse.Namespace) -> None:
    from infra.backends import backends_for_tools
    from infra.notify import WEBHOOK_ITEM

    if not await backends_for_tools(settings_from_args(args)).keys.remove_secret(WEBHOOK_ITEM):
        raise CliError("no webhook is stored (`ocedge notify set-webhook` stores one)")
    emit(args, {"webhook": None, "removed": True},
         "Removed the stored webhook (from the workspace's next start).")


async def test(args: argparse.Namespace) -> None:
    from infra.aws.backends import resolve_stack
    from infra.backends import backends_for_tools
    from infra.notify import configured_channels, deliver, describe, sample

    settings = resolve_stack(settings_from_args(args))
    targets = await configured_channels(settings, backends_for_tools(settings))
    if not targets:
        raise CliError("no notification channel is configured: set OCEDGE_NOTIFY_URL (and "
                       "OCEDGE_NOTIFY_FORMAT: json, ntfy or slack), store one with `ocedge "
                       "notify set-webhook`, or use --stack NAME for the stack's SNS topic")
    notice = sample(settings)
    progress(f"sending a test notice: {describe(targets)}")
    failed = [target.name for target in targets
              if not await deliver(target, notice, backoff=(1.0,))]
    if failed:
        raise CliError(f"the test notice was not delivered by {', '.join(failed)} (the "
                       "reason is logged above; check the URL or the topic's permissions)")
    emit(args, {"delivered": [target.name for target in targets], "notice": notice.payload()},
         f"Sent a test notice: {describe(targets)}.")


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``notify set-webhook|remove-webhook|test`` to ``ocedge``'s subcommands."""
    notify = subparsers.add_parser(
        "notify", help="notices when the agent finishes or needs you").add_subparsers(
        dest="notify_command", required=True)
    p = notify.add_parser("set-webhook", parents=[common],
                          help="store a webhook URL (read from stdin, or a prompt), sealed")
    p.add_argument("--format", choices=("json", "ntfy", "slack"), default="json",
                   help="what the webhook expects (default: json)")
    p.set_defaults(run=set_webhook)
    p = notify.add_parser("remove-webhook", parents=[common], help="forget the stored webhook")
    p.set_defaults(run=remove_webhook)
    p = notify.add_parser("test", parents=[common],
                          help="send a sample notice through every configured channel")
    p.set_defaults(run=test)
