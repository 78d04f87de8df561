"""Credentials: API keys, the admin password, and the server-side secrets.

- API keys look like ``oce_<id>_<secret>``. ``id`` is public (the lookup key);
  ``secret`` is 32 random bytes in base62 and is stored only as a BLAKE2b hash
  keyed with a server-side pepper, so a leaked table cannot be replayed.
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

from infra.interfaces import ApiKeyRecord

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


def mint_api_key(name: str, pepper: bytes, expires: float | None = None,
                 now: float | None = None) -> NewKey:
    key_id = base62(secrets.token_bytes(9))[-_KEY_ID_LEN:]
    secret = base62(secrets.token_bytes(_SECRET_BYTES))
    record = ApiKeyRecord(
        id=key_id,
        name=name,
        secret_hash=hash_secret(secret, pepper),
        created=time.time() if now is None else now,
        expires=expires,
    )
    return NewKey(key=f"{KEY_PREFIX}_{key_id}_{secret}", record=record)


def check_api_key(secret: str, record: ApiKeyRecord | None, pepper: bytes,
                  now: float) -> bool:
    """Constant-time check of a presented secret against a stored record."""
    stored = record.secret_hash if record is not None else hash_secret(_DUMMY_SECRET, pepper)
    matches = hmac.compare_digest(hash_secret(secret, pepper), stored)
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


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """A random server secret kept in a 0600 file, created on first use."""
    try:
        data = path.read_bytes()
        if len(data) >= nbytes:
            return data[:nbytes]
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(nbytes)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    try:
        # Link, not rename: if another process created it first, theirs wins.
        os.link(tmp, path)
    except FileExistsError:
        data = path.read_bytes()[:nbytes]
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
