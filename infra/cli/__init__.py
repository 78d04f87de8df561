"""``ocedge``: the admin command line.

    ocedge dev                       run the local deployment
    ocedge keys create|list|revoke   API keys
    ocedge admin password|totp|logout-all   the admin login: password, 2FA, sessions
    ocedge admin rotate-secrets      replace the server secrets (sessions end, keys carried over)
    ocedge status|wake|sleep         the container's state; start or stop it
    ocedge reap                      stop a container that hung past its deadline
    ocedge init --stack NAME         initialise a deployed stack (admin, secrets, first key)
    ocedge provider set|list|remove  sealed model-provider keys (BYOK)
    ocedge secret set|list|remove    sealed secrets for the agent's tools (GITHUB_TOKEN…)
    ocedge notify set-webhook|test   where notices go (a sealed webhook), and a sample

Every command honours --state-dir (default: OCEDGE_STATE_DIR or .ocedge/) and
--stack (default: OCEDGE_STACK; without one, the local backend). One module per
command family, each with an ``add_commands(subparsers, common)``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from infra.agent_secrets import AgentSecretError
from infra.cli import admin, dev, init, keys, lifecycle, notify, provider, secret
from infra.cli.console import CliError
from infra.cli.options import common_options
from infra.interfaces import BackendError
from infra.providers import ProviderKeyError
from infra.settings import SettingsError

COMMAND_FAMILIES = (dev, keys, admin, lifecycle, init, provider, secret, notify)
# What a user can cause: one line on stderr, exit status 2, no traceback.
USER_ERRORS = (CliError, SettingsError, BackendError, ProviderKeyError, AgentSecretError)


def build_parser() -> argparse.ArgumentParser:
    """``ocedge``'s parser, with every command family's subcommands."""
    parser = argparse.ArgumentParser(prog="ocedge", description="opencode-edge admin CLI")
    parser.add_argument("--stack", help="the deployed CloudFormation stack to work on "
                        "(default: OCEDGE_STACK; without one, the local state directory)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    common = common_options()
    for family in COMMAND_FAMILIES:
        family.add_commands(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status (0, 2 for a user error, 130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, None] | None] = args.run
    try:
        result = run(args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except USER_ERRORS as exc:
        print(f"ocedge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
