"""Hand opencode the provider keys (BYOK) at boot, opened from their sealed form.

The container is the only place a provider key is ever opened. It goes from the
key store, through :func:`infra.providers.open_sealed`, straight into opencode's
``PUT /auth/{providerID}`` — never into an environment variable, a log line or a
file of ours. (opencode keeps it in its own ``auth.json`` under its data directory
on local disk, which is never synced to S3.)

Call :func:`push_provider_keys` after opencode answers and before the container
registers, so no prompt can reach opencode before its keys are in place.
opencode reads stored keys when a project instance boots, so after changing
them we ask it to dispose its instances (``POST /global/dispose``); the next
request boots them again with the new keys.

A key removed with ``ocedge provider remove`` is removed from opencode at the
next boot: the ids (never the keys) pushed last time are remembered in
``<state dir>/ocedge-providers.json``, a file of the container's own (earlier versions
kept it in opencode's data directory, which the agent owns; it is read from there once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import httpx

from infra.backends import Backends
from infra.interfaces import ProviderCredential
from infra.providers import ProviderKeyError, check_provider_id, open_sealed
from infra.settings import Settings

log = logging.getLogger("ocedge.container")

MARKER = "ocedge-providers.json"


def _read_marker(path: Path) -> set[str]:
    try:
        # Never through a symlink: the legacy marker lies in a directory the agent owns.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW)) as handle:
            ids = json.loads(handle.read())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError):
        log.warning("ignoring an unreadable %s", path)
        return set()
    return {str(i) for i in ids} if isinstance(ids, list) else set()


def _write_marker(path: Path, ids: set[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sorted(ids)))
    os.replace(tmp, path)


async def push_provider_keys(settings: Settings, backends: Backends, url: str,
                             auth: httpx.Auth) -> list[str]:
    """Give the opencode at ``url`` every stored provider key; returns the provider ids
    it accepted. Failures are logged (by provider id) and skipped: the workspace still
    starts, without that provider."""
    records = await backends.keys.list_providers()
    marker = settings.state_dir / MARKER
    legacy = settings.opencode_data / MARKER
    previous = _read_marker(marker) | _read_marker(legacy)
    stale = {p for p in previous - {r.provider for r in records} if _valid(p)}
    if not records and not stale:
        legacy.unlink(missing_ok=True)
        return []
    # One blocking read (SSM on AWS), off the event loop: the current sealing key, and
    # while a rotation re-seals, the one it replaces.
    sealing_keys = await asyncio.to_thread(backends.sealing_keys) if records else ()
    if records and not sealing_keys:
        log.error("%d provider key(s) are stored but this deployment has no sealing key; "
                  "set them again with `ocedge provider set`", len(records))
        records = []

    pushed: list[str] = []
    removed: list[str] = []
    kept = set(stale)  # removals that fail are retried next boot
    async with httpx.AsyncClient(base_url=url, auth=auth, trust_env=False,
                                 timeout=15.0) as client:
        for record in records:
            kept.add(record.provider)
            if await _push(client, sealing_keys, record):
                pushed.append(record.provider)
        for provider in sorted(stale):
            try:
                response = await client.delete(f"/auth/{provider}")
            except httpx.HTTPError as exc:
                log.error("could not remove the provider key for %s from opencode (%s)",
                          provider, type(exc).__name__)
                continue
            if response.is_success:
                kept.discard(provider)
                removed.append(provider)
                log.info("provider key for %s removed (it is no longer stored)", provider)
            else:
                log.error("opencode refused to remove the key for %s (HTTP %d)", provider,
                          response.status_code)
        if pushed or removed:
            try:
                await client.post("/global/dispose")
            except httpx.HTTPError as exc:
                log.warning("opencode did not dispose its instances (%s); a provider key "
                            "change may only apply after a restart", type(exc).__name__)
    _write_marker(marker, kept)
    legacy.unlink(missing_ok=True)
    if pushed:
        log.info("provider keys given to opencode: %s", ", ".join(pushed))
    return pushed


def _valid(provider: str) -> bool:
    try:
        check_provider_id(provider)
    except ProviderKeyError:
        return False
    return True


async def _push(client: httpx.AsyncClient, sealing_keys: tuple[bytes, ...],
                record: ProviderCredential) -> bool:
    try:
        check_provider_id(record.provider)
        key = open_sealed(sealing_keys, record.provider, record.sealed)
    except ProviderKeyError as exc:
        log.error("%s", exc)
        return False
    try:
        response = await client.put(f"/auth/{record.provider}", json={"type": "api", "key": key})
    except httpx.HTTPError as exc:
        # The exception's text is never logged: it could quote the request.
        log.error("could not give opencode the key for %s (%s)", record.provider,
                  type(exc).__name__)
        return False
    if not response.is_success:
        log.error("opencode refused the key for %s (HTTP %d)", record.provider,
                  response.status_code)
        return False
    return True
