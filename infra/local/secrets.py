"""Server secrets for the local backend: each in a 0600 file under the state directory."""

from __future__ import annotations

from pathlib import Path

from infra.credentials import load_or_create_secret

_FILES = {"pepper": "pepper.key", "session_secret": "session.key",
          "sealing_key": "sealing.key"}


class LocalSecrets:
    """A :class:`~infra.interfaces.SecretSource` of 0600 files, created on first use."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def get(self, name: str, create: bool) -> bytes | None:
        path = self.state_dir / _FILES[name]
        if create:
            return load_or_create_secret(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data[:32] if len(data) >= 32 else None

    def ensure(self) -> bool:
        missing = [name for name in _FILES if self.get(name, create=False) is None]
        for name in missing:
            self.get(name, create=True)
        return bool(missing)
