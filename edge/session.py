"""Signed session cookies: what a browser holds after logging in on the login page.

A cookie is ``<payload>.<signature>``: base64url JSON and an HMAC-SHA256 over it.
The payload binds the session to

- the credential that opened it (a fingerprint of the admin's password hash, or
  the API key id), so changing the password or revoking the key ends it;
- the session epoch of the key store when it was issued, so logging out, ``ocedge
  admin logout-all``, a password change and turning 2FA on or off end every cookie
  at once, on every edge instance;
- an expiry no further away than the session lifetime (a cookie claiming more is
  refused, whatever its signature).

Over HTTPS the cookie is named ``__Host-ocedge_session``: browsers accept that name
only with Secure, Path=/ and no Domain, so no other host of the same site (another
Function URL, another port) can plant or overwrite it. Everything is compared as
bytes: no input makes verification raise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

COOKIE_NAME = "ocedge_session"
SECURE_COOKIE_NAME = "__Host-" + COOKIE_NAME
_NAMES = (COOKIE_NAME.encode(), SECURE_COOKIE_NAME.encode())
# A cookie longer than this was not made here.
MAX_COOKIE_LENGTH = 512
# Clocks of different edge instances may disagree by this much.
_CLOCK_SKEW = 60.0


@dataclass(frozen=True)
class Session:
    subject: str  # "admin" or "key"
    expires: float
    binding: str  # password fingerprint or key id
    epoch: int = 0


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def password_fingerprint(password_hash: bytes) -> str:
    return hashlib.blake2b(password_hash, digest_size=8, person=b"ocedge-pwfp").hexdigest()


class SessionSigner:
    """Issues and checks cookies for sessions of at most ``ttl`` seconds."""

    def __init__(self, secret: bytes, ttl: float = 12 * 3600.0) -> None:
        self._secret = secret
        self.ttl = ttl

    def _sign(self, payload: bytes) -> bytes:
        return _b64(hmac.new(self._secret, payload, hashlib.sha256).digest())

    def issue(self, session: Session) -> str:
        payload = _b64(json.dumps(
            {"s": session.subject, "e": int(session.expires), "b": session.binding,
             "p": session.epoch}, separators=(",", ":")).encode())
        return (payload + b"." + self._sign(payload)).decode()

    def verify(self, value: bytes | str, now: float) -> Session | None:
        """The session ``value`` carries, or None: a wrong signature, a malformed or
        expired payload, or an expiry beyond the session lifetime."""
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        if len(raw) > MAX_COOKIE_LENGTH:
            return None
        payload, dot, signature = raw.partition(b".")
        if not payload or not dot or not signature:
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
            session = Session(str(data["s"]), float(data["e"]), str(data["b"]), int(data["p"]))
        except (ValueError, KeyError, TypeError, OverflowError):
            return None
        if not now < session.expires <= now + self.ttl + _CLOCK_SKEW:
            return None
        return session


def cookie_name(secure: bool) -> str:
    """The session cookie's name for a request that came over HTTPS (``secure``) or not."""
    return SECURE_COOKIE_NAME if secure else COOKIE_NAME


def set_cookie_header(value: str, max_age: int, secure: bool) -> bytes:
    parts = [f"{cookie_name(secure)}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


def clear_cookie_header(secure: bool) -> bytes:
    return set_cookie_header("", 0, secure)


def session_cookie(cookie_headers: Iterable[bytes], secure: bool) -> bytes | None:
    """The value of the session cookie among ``cookie_headers`` (a request may send
    several Cookie headers), under the one name valid for the request's scheme."""
    wanted = cookie_name(secure).encode()
    for header in cookie_headers:
        for part in header.split(b";"):
            name, eq, value = part.strip().partition(b"=")
            if eq and name == wanted:
                return value.strip()
    return None


def split_cookie_header(header: str) -> tuple[str | None, str]:
    """(the edge's session cookie's value, the cookie header without it): the edge's
    cookies, under either name, never go upstream."""
    ours: str | None = None
    kept = []
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name.encode("latin-1", "replace") in _NAMES:
            ours = value
        elif name:
            kept.append(part.strip())
    return ours, "; ".join(kept)
