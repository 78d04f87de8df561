"""Hand the agent its secrets at boot: opened from their sealed form into opencode's
environment, never into a file, a log line or the bucket.

``ocedge secret set NAME`` stores a value sealed (:mod:`infra.agent_secrets`); here,
inside the container and nowhere else, it is opened and becomes ``$NAME`` in the
environment opencode starts with, which its shell, its tools, its terminals and its
MCP servers inherit (and which its config can reference as ``{env:NAME}``). Only the
names are ever logged.

With a ``GITHUB_TOKEN`` (or ``GH_TOKEN``) stored, git is given a credential helper for
https://github.com (and any ``OCEDGE_GIT_TOKEN_HOSTS``), so ``git clone``/``git push``
over HTTPS just work. The helper is configured through git's own environment
(``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n``, git ≥ 2.31:
git-scm.com/docs/git-config#Documentation/git-config.txt-GITCONFIGCOUNT), so no
configuration file anywhere — least of all the workspace's ``.git/config``, which
lives in the bucket — ever changes; and it reads the token from the environment when
git asks, so the token is written nowhere either.
"""

from __future__ import annotations

import asyncio
import logging

from infra.agent_secrets import CONTAINER_OWN, AgentSecretError, check_name, open_sealed
from infra.interfaces import Backends
from infra.settings import Settings

log = logging.getLogger("ocedge.container")

TOKEN_NAMES = ("GITHUB_TOKEN", "GH_TOKEN")
GITHUB = "https://github.com"
# git's credential-helper protocol (git-scm.com/docs/gitcredentials): asked to "get",
# answer with a username and the token from the environment; nothing to store or erase.
# GitHub takes any username with a token; x-access-token is the one its docs use.
HELPER = ('!f() { test "$1" = get || exit 0; token="${GITHUB_TOKEN:-$GH_TOKEN}"; '
          'test -n "$token" || exit 0; echo username=x-access-token; '
          'echo "password=$token"; }; f')


async def open_agent_secrets(backends: Backends) -> dict[str, str]:
    """Every stored agent secret, opened: name → value. One that does not open (or whose
    name became reserved) is logged by name and left out; the workspace still starts."""
    records = await backends.keys.list_secrets()
    if not records:
        return {}
    # One blocking read (SSM on AWS), off the event loop.
    keys = await asyncio.to_thread(backends.sealing_keys)
    if not keys:
        log.error("%d agent secret(s) are stored but this deployment has no sealing key; "
                  "set them again with `ocedge secret set`", len(records))
        return {}
    opened: dict[str, str] = {}
    for record in records:
        if record.name.startswith(CONTAINER_OWN):
            continue  # the container's own (a webhook URL), never the agent's
        try:
            opened[check_name(record.name)] = open_sealed(keys, record.name, record.sealed)
        except AgentSecretError as exc:
            log.error("agent secret left out: %s", exc)
    return opened


def git_credentials(settings: Settings, secrets: dict[str, str]) -> dict[str, str]:
    """The environment that gives git the token helper, when a token is among ``secrets``."""
    if not any(secrets.get(name) for name in TOKEN_NAMES):
        return {}
    hosts = [GITHUB] + [h.strip().rstrip("/") for h in settings.git_token_hosts.split(",")
                        if h.strip()]
    env = {"GIT_CONFIG_COUNT": str(len(hosts))}
    for index, host in enumerate(hosts):
        env[f"GIT_CONFIG_KEY_{index}"] = f"credential.{host}.helper"
        env[f"GIT_CONFIG_VALUE_{index}"] = HELPER
    return env


async def agent_environment(settings: Settings, backends: Backends) -> dict[str, str]:
    """What opencode's environment gains: the secrets, and git's helper for a token."""
    secrets = await open_agent_secrets(backends)
    env = dict(secrets)
    env.update(git_credentials(settings, secrets))
    if secrets:
        log.info("agent secrets given to opencode: %s%s", ", ".join(sorted(secrets)),
                 " (and git's credential helper)" if "GIT_CONFIG_COUNT" in env else "")
    return env
