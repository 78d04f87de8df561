"""``ocedge admin rotate-secrets``: replace the server secrets (:mod:`infra.rotation`).

Every browser session ends; API keys keep working (re-peppered) unless
``--revoke-api-keys``; provider keys are sealed again under the new sealing key.
"""

from __future__ import annotations

import argparse
from typing import Any

from infra.cli.console import emit, progress
from infra.cli.options import settings_from_args


async def rotate(args: argparse.Namespace) -> None:
    """Rotate both secrets documents of the deployment and report what was carried over."""
    from infra.backends import backends_for_tools
    from infra.rotation import rotate_secrets

    settings = settings_from_args(args)
    backends = backends_for_tools(settings)
    keys = {record.id: record for record in await backends.keys.list_keys()}
    # Running edges re-read their secrets every OCEDGE_KEY_CACHE_TTL seconds.
    done = await rotate_secrets(backends, wait=settings.key_cache_ttl + 1 if keys else 0,
                                revoke_api_keys=args.revoke_api_keys, progress=progress)

    def named(ids: list[str]) -> list[str]:
        return [f"{i} ({keys[i].name})" if i in keys else i for i in ids]

    where = f"stack {settings.stack}" if settings.stack else str(settings.state_dir.resolve())
    lines = [f"Rotated the server secrets of {where}.",
             "  cookie key:   replaced; every browser session has ended (log in again)"]
    if done.totp == "re-sealed":
        lines.append("  2FA:          kept (sealed again); the code shown right now is spent, "
                     "use the next one")
    elif done.totp == "unopenable":
        lines.append("  2FA:          ! the stored secret did not open: turn it off and on "
                     "again (`ocedge admin totp disable`, then `enable`)")
    if done.revoked:
        lines.append(f"  API keys:     {len(done.revoked)} revoked, as asked: make new ones "
                     f"with `ocedge keys create --name NAME`")
    elif done.repeppered:
        lines += [f"  API keys:     {len(done.repeppered)} re-peppered; they keep working "
                  f"unchanged:", *(f"                  {k}" for k in named(done.repeppered)),
                  "                Revoke any you did not make (`ocedge keys revoke ID`): "
                  "a rotation carries every stored key over."]
    else:
        lines.append("  API keys:     none stored")
    if done.unusable:
        lines += ["  ! these API keys could not be carried over and no longer work; make new "
                  "ones and revoke these:", *(f"      {k}" for k in named(done.unusable))]
    lines.append(f"  sealing key:  replaced; {len(done.resealed)} provider key(s) sealed again"
                 + (f" ({', '.join(done.resealed)})" if done.resealed else "")
                 + "; a running container keeps what it has until it next starts")
    if done.unopenable:
        lines.append(f"  ! provider keys that did not open (set them again with `ocedge "
                     f"provider set`): {', '.join(done.unopenable)}")
    lines.append(f"  agent secrets: {len(done.secrets_resealed)} sealed again")
    if done.secrets_unopenable:
        lines.append(f"  ! agent secrets that did not open (set them again with `ocedge "
                     f"secret set`): {', '.join(done.secrets_unopenable)}")
    data = {"where": where, "pepper_generation": done.pepper_generation,
            "session_epoch": done.session_epoch, "totp": done.totp,
            "api_keys": {"repeppered": done.repeppered, "revoked": done.revoked,
                         "unusable": done.unusable},
            "providers": {"resealed": done.resealed, "unopenable": done.unopenable},
            "agent_secrets": {"resealed": done.secrets_resealed,
                              "unopenable": done.secrets_unopenable}}
    emit(args, data, "\n".join(lines))


def add_admin_commands(admin: Any, common: argparse.ArgumentParser) -> None:
    """Add ``rotate-secrets`` to ``ocedge admin``'s subcommands."""
    p = admin.add_parser(
        "rotate-secrets", parents=[common],
        help="replace the server secrets: sessions end, API keys are re-peppered, provider "
             "keys re-sealed")
    p.add_argument("--revoke-api-keys", action="store_true",
                   help="revoke every API key instead of carrying them over (when someone "
                        "else may have added keys of their own)")
    p.set_defaults(run=rotate)
