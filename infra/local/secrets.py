"""Server secrets for the local backend: the two documents of :mod:`infra.secrets` in
0600 files under the state directory (``edge-secrets.json``, ``container-secrets.json``).

A state directory made before the split keeps one raw 32-byte file per secret
(``pepper.key``, ``session.key``, ``sealing.key``); the first read moves them into
the documents, as they are (every API key, cookie and sealed value stays valid), and
removes the old files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from infra.credentials import read_secret_file
from infra.secrets import CONTAINER, EDGE, ContainerSecrets, EdgeSecrets, Peppers, SecretsError

_FILES = {EDGE: "edge-secrets.json", CONTAINER: "container-secrets.json"}
_LEGACY = {EDGE: ("pepper.key", "session.key"), CONTAINER: ("sealing.key",)}


def _write_new(path: Path, text: str) -> Path:
    """``text`` in a fresh 0600 file beside ``path``, on disk before anyone sees it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


class LocalSecrets:
    """A :class:`~infra.secrets.SecretSource` of 0600 files in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _path(self, name: str) -> Path:
        return self.state_dir / _FILES[name]

    def where(self, name: str) -> str:
        return str(self._path(name))

    def read(self, name: str) -> str | None:
        path = self._path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return self._migrate(name)
        if not text.strip():
            raise SecretsError(
                f"the server secrets file {path} is empty: restore it from a backup, or "
                f"delete it to make new secrets (which ends every session and invalidates "
                f"what they protect: API keys, or the stored provider keys)")
        return text

    def create(self, name: str, text: str) -> bool:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_new(path, text)
        try:
            # Link, not rename: if another process created it first, theirs wins.
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def replace(self, name: str, text: str) -> None:
        path = self._path(name)
        os.replace(_write_new(path, text), path)

    def _migrate(self, name: str) -> str | None:
        """The document made from a state directory's pre-split secret files, if any."""
        legacy = [self.state_dir / file for file in _LEGACY[name]]
        found = [read_secret_file(path) for path in legacy]
        if not any(found):
            return None
        if name == EDGE:
            pepper, session = found
            fresh = EdgeSecrets.generate()
            text = EdgeSecrets(session or fresh.session_secret,
                               Peppers.single(pepper) if pepper else fresh.peppers).to_json()
        else:
            assert found[0] is not None
            text = ContainerSecrets(found[0]).to_json()
        self.create(name, text)
        for path in legacy:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return self._path(name).read_text()
