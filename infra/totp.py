"""Two-factor login for the admin: RFC 6238 time-based one-time codes.

The secret is made by ``ocedge admin totp enable`` and stored sealed (pynacl
SecretBox, the sealing of :mod:`infra.providers`) under a key derived from the
cookie-signing secret. That is the edge's own secret — it must check codes, and it
never reads the provider sealing key — and whoever holds it can mint sessions
anyway, so it guards nothing new; a copy of the keys table alone opens nothing.

Codes are 6 digits for 30-second steps (what every authenticator app uses); one
step of clock drift either way is accepted, and each step's code logs in once
(:meth:`~infra.interfaces.KeyStore.use_totp_step`).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from infra.providers import ProviderKeyError, open_sealed, seal

DIGITS = 6
STEP = 30
ISSUER = "opencode-edge"
# What the sealed value is bound to (the provider id slot of the sealing format).
_PURPOSE = "admin-totp"
_CODE = re.compile(r"^[0-9]{6}$")


class TotpError(ValueError):
    """The stored 2FA secret does not open, or a code is not even a code."""


def sealing_key(session_secret: bytes) -> bytes:
    """The key the TOTP secret is sealed with, derived from the cookie-signing secret."""
    return hashlib.blake2b(b"", key=session_secret, digest_size=32,
                           person=b"ocedge-totp").digest()


def new_secret() -> str:
    """A fresh random secret (160 bits, base32, as RFC 4226 recommends)."""
    import pyotp

    return pyotp.random_base32(32)


def provisioning_uri(secret: str, user: str, deployment: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans."""
    import pyotp

    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(
        name=user, issuer_name=f"{ISSUER} ({deployment})")


def seal_secret(session_secret: bytes, secret: str) -> bytes:
    return seal(sealing_key(session_secret), _PURPOSE, secret)


def open_secret(session_secret: bytes, sealed: bytes) -> str:
    try:
        return open_sealed(sealing_key(session_secret), _PURPOSE, sealed)
    except ProviderKeyError:
        raise TotpError(
            "the stored 2FA secret does not open with this deployment's secrets (were "
            "they replaced?): turn 2FA off with `ocedge admin totp disable` (it takes the "
            "admin password) and enable it again") from None


def normalise(code: str) -> str | None:
    """The six digits of ``code`` as typed ("123 456", "123-456"), or None."""
    digits = code.replace(" ", "").replace("-", "").strip()
    return digits if _CODE.match(digits) else None


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code ``code`` is (this one, or one either side for clock
    drift), or None. Every candidate is compared, in constant time."""
    import pyotp

    typed = normalise(code)
    if typed is None:
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    current = int(now // STEP)
    found = None
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.at(step * STEP).encode(), typed.encode()):
            found = step
    return found


def code_at(secret: str, now: float) -> str:
    """The code for the time ``now`` (what an authenticator app shows)."""
    import pyotp

    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).at(now)
