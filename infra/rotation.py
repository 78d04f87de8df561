"""Replace the deployment's server secrets: ``ocedge admin rotate-secrets``.

For when a secret may have leaked (a container from before the agent had a user of its
own could read them all), or as hygiene. Both documents of :mod:`infra.secrets` are
replaced, and everything they protect is carried over without anyone re-entering it:

The edge's secrets
    1. a new cookie key and a new pepper generation are stored; hashes ending at the
       old generation still pass (the floor stays), so no API key fails meanwhile;
    2. the admin's two-factor secret, sealed under a key derived from the cookie key, is
       sealed again under the new one;
    3. every browser session ends (the session epoch moves on);
    4. after ``wait`` seconds — the edges re-read their secrets at least that often, so
       by then each knows the new generation — every API key's stored hash is wrapped
       in the new pepper (:func:`infra.credentials.repepper`: the key's secret is
       never needed, the key keeps working unchanged);
    5. the floor moves to the new generation: a hash that does not end with the new
       pepper — one made with a stolen old pepper — passes nowhere any more.

The container's secret
    6. a new sealing key is stored beside the old one, so a container that boots now
       still opens every provider key;
    7. every provider key and agent secret is opened and sealed again under the new key;
    8. the old sealing key is dropped.

A rotation carries every stored API key over, including one somebody else may have
added while they could write the keys table: the report lists them all, and
``revoke_api_keys`` ends every one instead (make new ones with ``ocedge keys create``).
Running it again after an interruption finishes the job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from infra import totp
from infra.agent_secrets import reseal_all
from infra.credentials import hash_generations, repepper
from infra.errors import BackendError
from infra.interfaces import Backends
from infra.providers import ProviderKeyError, open_sealed, seal
from infra.secrets import CONTAINER, EDGE, ContainerSecrets, EdgeSecrets


class RotationError(BackendError):
    """The secrets cannot be rotated here; the message says why."""


@dataclass
class Rotation:
    """What a rotation did, key by key (ids and provider names, never a secret)."""

    pepper_generation: int = 0
    session_epoch: int = 0
    totp: str = "off"  # "off", "re-sealed", or "unopenable" (turn it off and on again)
    repeppered: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    # Hashes that could not be carried over: these keys must be made anew.
    unusable: list[str] = field(default_factory=list)
    resealed: list[str] = field(default_factory=list)
    # Provider keys that did not open with the old sealing key: set them again.
    unopenable: list[str] = field(default_factory=list)
    # Agent secrets (infra/agent_secrets.py), likewise.
    secrets_resealed: list[str] = field(default_factory=list)
    secrets_unopenable: list[str] = field(default_factory=list)


async def rotate_secrets(backends: Backends, wait: float, revoke_api_keys: bool = False,
                         progress: Callable[[str], None] = lambda line: None) -> Rotation:
    """Replace both secrets documents and carry over what they protect (see above)."""
    if backends.secrets.overrides:
        names = ", ".join(f"OCEDGE_{name.upper()}" for name in sorted(backends.secrets.overrides))
        raise RotationError(f"{names} set the edge's secrets from the environment, where "
                            f"ocedge cannot replace them: unset them to use (and rotate) the "
                            f"stored secrets, or change them yourself")
    source = backends.secrets.source
    backends.secrets.forget()
    done = Rotation()
    old = backends.secrets.edge(create=True)
    assert old is not None
    await _rotate_edge(backends, old, wait, revoke_api_keys, done, progress)
    await _rotate_container(backends, done, progress)
    backends.secrets.forget()
    progress(f"done: {source.where(EDGE)}, {source.where(CONTAINER)}")
    return done


async def _rotate_edge(backends: Backends, old: EdgeSecrets, wait: float, revoke: bool,
                       done: Rotation, progress: Callable[[str], None]) -> None:
    keys, source = backends.keys, backends.secrets.source
    new = old.rotated()
    sealed_totp = await keys.get_totp()
    totp_secret = None
    if sealed_totp is not None:
        try:
            totp_secret = totp.open_secret(old.session_secret, sealed_totp)
        except totp.TotpError:
            done.totp = "unopenable"
    await asyncio.to_thread(source.replace, EDGE, new.to_json())
    done.pepper_generation = new.peppers.current
    progress(f"new cookie key and pepper generation {new.peppers.current} stored")
    if totp_secret is not None:
        await keys.set_totp(totp.seal_secret(new.session_secret, totp_secret))
        # Setting it forgets which code was used last: spend the current one.
        await keys.use_totp_step(int(time.time() // totp.STEP))
        done.totp = "re-sealed"
    done.session_epoch = await keys.end_sessions()
    progress("every browser session ended")

    records = await keys.list_keys()
    if records and wait > 0 and not revoke:
        progress(f"waiting {wait:.0f} s for every running edge to read the new pepper")
        await asyncio.sleep(wait)
    for record in records:
        if revoke:
            await keys.revoke_key(record.id, time.time())
            done.revoked.append(record.id)
            continue
        wrapped = repepper(record.secret_hash, new.peppers)
        if wrapped is None:
            done.unusable.append(record.id)
        elif wrapped == record.secret_hash or await keys.rehash_key(
                record.id, record.secret_hash, wrapped):
            done.repeppered.append(record.id)
        elif await keys.get_key(record.id) is not None:
            # Its hash changed under us (nothing but a rotation changes it): say so.
            done.unusable.append(record.id)
    minted = [g[0] for r in await keys.list_keys()
              if (g := hash_generations(r.secret_hash)) is not None and r.id not in done.unusable]
    settled = replace(new, peppers=new.peppers.settled(min(minted) if minted else None))
    await asyncio.to_thread(source.replace, EDGE, settled.to_json())
    progress(f"API keys: {len(done.repeppered)} re-peppered, {len(done.revoked)} revoked, "
             f"{len(done.unusable)} unusable")


async def _rotate_container(backends: Backends, done: Rotation,
                            progress: Callable[[str], None]) -> None:
    keys, source = backends.keys, backends.secrets.source
    old = backends.secrets.container(create=False)
    if old is None:
        # Nothing was ever sealed: a first key is all there is to make.
        await asyncio.to_thread(source.create, CONTAINER, ContainerSecrets.generate().to_json())
        progress("new sealing key stored (none existed)")
        return
    rotated = old.rotated()
    # The old key stays beside the new one until every value is sealed again.
    await asyncio.to_thread(source.replace, CONTAINER, rotated.to_json())
    progress("new sealing key stored")
    for record in await keys.list_providers():
        for _ in range(2):  # once more if it was set anew meanwhile
            try:
                plain = open_sealed(rotated.keys, record.provider, record.sealed)
            except ProviderKeyError:
                done.unopenable.append(record.provider)
                break
            if await keys.reseal_provider(record.provider, record.sealed,
                                          seal(rotated.sealing_key, record.provider, plain)):
                done.resealed.append(record.provider)
                break
            fresh = await keys.get_provider(record.provider)
            if fresh is None:
                break
            record = fresh
    done.secrets_resealed, done.secrets_unopenable = await reseal_all(
        keys, rotated.keys, rotated.sealing_key)
    await asyncio.to_thread(source.replace, CONTAINER, rotated.settled().to_json())
    progress(f"provider keys: {len(done.resealed)} re-sealed, "
             f"{len(done.unopenable)} did not open; agent secrets: "
             f"{len(done.secrets_resealed)} re-sealed, {len(done.secrets_unopenable)} did not open")
