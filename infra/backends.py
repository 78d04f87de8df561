"""Pick the store and compute implementations a deployment's settings ask for."""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.credentials import load_or_create_secret, secret_from_setting
from infra.interfaces import Compute, KeyStore, StateStore
from infra.settings import Settings, SettingsError


@dataclass
class Backends:
    keys: KeyStore
    state: StateStore
    compute: Compute
    # Keys the hashed API keys and the session cookies; never leave the server.
    pepper: bytes = field(repr=False)
    session_secret: bytes = field(repr=False)


def open_backends(settings: Settings) -> Backends:
    if settings.backend != "local":
        raise SettingsError(f"backend {settings.backend!r} is not available in this build")
    from infra.local.compute import LocalCompute
    from infra.local.db import database
    from infra.local.keys import LocalKeyStore
    from infra.local.state import LocalStateStore

    state_dir = settings.state_dir.resolve()
    db = database(state_dir)
    pepper = (secret_from_setting(settings.pepper) if settings.pepper
              else load_or_create_secret(state_dir / "pepper.key"))
    session_secret = (secret_from_setting(settings.session_secret) if settings.session_secret
                      else load_or_create_secret(state_dir / "session.key"))
    return Backends(
        keys=LocalKeyStore(db),
        state=LocalStateStore(db),
        compute=LocalCompute(state_dir, env=settings.child_env()),
        pepper=pepper,
        session_secret=session_secret,
    )
