"""Credentials: API keys, the admin password, and the server-side secrets.

- API keys look like ``oce_<id>_<secret>``. ``id`` is public (the lookup key);
  ``secret`` is 32 random bytes in base62 and is stored only as a BLAKE2b hash
  keyed with a server-side pepper, so a leaked table cannot be replayed. A rotation
  re-peppers the stored hash without the secret: it wraps it in one more keyed hash
  under the new pepper generation (:mod:`infra.secrets`).
- The admin password is stored only as an argon2id hash (``nacl.pwhash``).

nacl is imported inside the functions: it is not needed on every cold start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.interfaces import ApiKeyRecord, BackendError
from infra.secrets import Peppers

if TYPE_CHECKING:
    from infra.settings import Settings

KEY_PREFIX = "oce"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY_RE = re.compile(r"^oce_([0-9A-Za-z]{8,32})_([0-9A-Za-z]{43,64})$")
_KEY_ID_LEN = 12
_SECRET_BYTES = 32
# Hash of a secret nobody has: unknown ids are checked against it so that a
# miss costs the same as a hit.
_DUMMY_SECRET = "0" * 43


def base62(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, digit = divmod(number, 62)
        out.append(_BASE62[digit])
    # Fixed width so every key of a kind has the same length.
    width = len(_to_width(len(data)))
    return "".join(reversed(out)).rjust(width, "0")


def _to_width(nbytes: int) -> str:
    # Digits needed for the largest number of nbytes bytes.
    number, out = (1 << (8 * nbytes)) - 1, ""
    while number:
        number //= 62
        out += "x"
    return out


@dataclass(frozen=True)
class NewKey:
    """A freshly minted key: ``key`` is shown to the user exactly once."""

    key: str
    record: ApiKeyRecord


def parse_api_key(value: str) -> tuple[str, str] | None:
    """Split ``oce_<id>_<secret>`` into (id, secret); None if it is not one."""
    match = _KEY_RE.match(value.strip())
    return (match.group(1), match.group(2)) if match else None


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX + "_")


def hash_secret(secret: str, pepper: bytes) -> bytes:
    # Keyed BLAKE2b, byte for byte what nacl.hash.blake2b gives (32-byte digest),
    # from hashlib: ten times cheaper on the request path and no nacl import.
    return hashlib.blake2b(secret.encode(), digest_size=32, key=pepper,
                           person=b"ocedge-apikey").digest()


# A stored hash is either the 32-byte digest of a key minted under pepper generation 0
# and never re-peppered (every key made before the first rotation), or _LAYERED, the
# generation it was minted under and the one it is re-peppered up to (2 bytes each),
# then the digest.
_LAYERED = b"\x02"
_DIGEST = 32


def _rewrap(digest: bytes, pepper: bytes) -> bytes:
    return hashlib.blake2b(digest, digest_size=_DIGEST, key=pepper,
                           person=b"ocedge-repepper").digest()


def _layers(stored: bytes) -> tuple[int, int, bytes] | None:
    """(minted, re-peppered up to, digest) of a stored hash; None if it is not one."""
    if len(stored) == _DIGEST:
        return 0, 0, stored
    if len(stored) == 5 + _DIGEST and stored[:1] == _LAYERED:
        return int.from_bytes(stored[1:3], "big"), int.from_bytes(stored[3:5], "big"), stored[5:]
    return None


def hash_generations(stored: bytes) -> tuple[int, int] | None:
    """(the pepper generation a stored hash was minted under, the one it is
    re-peppered up to); None if it is not a stored hash of ours."""
    layers = _layers(stored)
    return None if layers is None else (layers[0], layers[1])


def _stored(minted: int, upto: int, digest: bytes) -> bytes:
    if minted == upto == 0:
        return digest
    return _LAYERED + minted.to_bytes(2, "big") + upto.to_bytes(2, "big") + digest


def _peppers(pepper: bytes | Peppers) -> Peppers:
    return Peppers.single(pepper) if isinstance(pepper, bytes) else pepper


def mint_api_key(name: str, pepper: bytes | Peppers, expires: float | None = None,
                 now: float | None = None) -> NewKey:
    """A new key, hashed under the current pepper generation."""
    peppers = _peppers(pepper)
    key_id = base62(secrets.token_bytes(9))[-_KEY_ID_LEN:]
    secret = base62(secrets.token_bytes(_SECRET_BYTES))
    current = peppers.current
    record = ApiKeyRecord(
        id=key_id,
        name=name,
        secret_hash=_stored(current, current, hash_secret(secret, peppers[current])),
        created=time.time() if now is None else now,
        expires=expires,
    )
    return NewKey(key=f"{KEY_PREFIX}_{key_id}_{secret}", record=record)


def repepper(stored: bytes, pepper: bytes | Peppers) -> bytes | None:
    """``stored`` wrapped up to the current pepper generation (unchanged if it is there
    already); None if it is not a hash these peppers can carry forward."""
    peppers = _peppers(pepper)
    layers = _layers(stored)
    if layers is None:
        return None
    minted, upto, digest = layers
    if not (minted <= upto <= peppers.current
            and all(g in peppers.generations for g in range(upto + 1, peppers.current + 1))):
        return None
    for generation in range(upto + 1, peppers.current + 1):
        digest = _rewrap(digest, peppers[generation])
    return _stored(minted, peppers.current, digest)


def check_api_key(secret: str, record: ApiKeyRecord | None, pepper: bytes | Peppers,
                  now: float) -> bool:
    """Constant-time check of a presented secret against a stored record: its hash must
    end at a pepper generation the peppers still accept (the floor or later)."""
    peppers = _peppers(pepper)
    layers = _layers(record.secret_hash) if record is not None else None
    if layers is None or not peppers.accepts(layers[0], layers[1]):
        # A miss costs what a hit costs.
        hmac.compare_digest(hash_secret(secret, peppers[peppers.current]),
                            hash_secret(_DUMMY_SECRET, peppers[peppers.current]))
        return False
    minted, upto, stored = layers
    digest = hash_secret(secret, peppers[minted])
    for generation in range(minted + 1, upto + 1):
        digest = _rewrap(digest, peppers[generation])
    matches = hmac.compare_digest(digest, stored)
    return matches and record is not None and record.usable_at(now)


def hash_password(password: str) -> bytes:
    from nacl import pwhash

    return pwhash.argon2id.str(
        password.encode(),
        opslimit=pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        memlimit=pwhash.argon2id.MEMLIMIT_INTERACTIVE,
    )


def verify_password(password_hash: bytes, password: str) -> bool:
    from nacl import exceptions, pwhash

    try:
        return bool(pwhash.verify(password_hash, password.encode()))
    except exceptions.InvalidkeyError:
        return False


def generate_password() -> str:
    # 24 base62 characters ≈ 143 bits.
    return base62(secrets.token_bytes(18))


class SecretFileError(BackendError):
    """A server secret's file exists but cannot be the secret (truncated, empty)."""


def read_secret_file(path: Path, nbytes: int = 32) -> bytes | None:
    """The secret kept in ``path``; None if there is no such file.

    A file that exists but is shorter than a secret (truncated by a full disk, emptied
    by an editor) is an error, never a short key and never silently replaced: every
    API key, session and sealed value depends on the secret staying the same.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < nbytes:
        raise SecretFileError(
            f"the server secret {path} is {'empty' if not data else 'truncated'} "
            f"({len(data)} of {nbytes} bytes): restore it from a backup; or delete it to "
            f"make a new one, which ends every session and invalidates what it protects "
            f"(API keys for pepper.key, sealed provider keys for sealing.key)")
    return data[:nbytes]


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """A random server secret kept in a 0600 file, created on first use."""
    existing = read_secret_file(path, nbytes)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(nbytes)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        # On disk before it is linked in: a crash never leaves a short secret behind.
        handle.flush()
        os.fsync(handle.fileno())
    try:
        # Link, not rename: if another process created it first, theirs wins.
        os.link(tmp, path)
    except FileExistsError:
        theirs = read_secret_file(path, nbytes)
        assert theirs is not None
        data = theirs
    finally:
        tmp.unlink()
    return data


def secret_from_setting(value: str) -> bytes:
    """A secret given as a setting: hex if it looks like hex, else its bytes."""
    try:
        raw = bytes.fromhex(value)
        if len(raw) >= 16:
            return raw
    except ValueError:
        pass
    if len(value) < 16:
        raise ValueError("a server secret must be at least 16 characters")
    from nacl.encoding import RawEncoder
    from nacl.hash import blake2b

    return blake2b(value.encode(), digest_size=32, encoder=RawEncoder)


def secret_overrides(settings: Settings) -> dict[str, bytes]:
    """Server secrets given as settings; they win over the secret source."""
    found = {}
    if settings.pepper:
        found["pepper"] = secret_from_setting(settings.pepper)
    if settings.session_secret:
        found["session_secret"] = secret_from_setting(settings.session_secret)
    return found
