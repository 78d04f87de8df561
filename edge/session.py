"""Signed session cookies: what lets EventSource and WebSockets through after a login.

A cookie is ``<payload>.<signature>``: base64url JSON and an HMAC-SHA256 over it.
The payload binds the session to the credential that opened it (a fingerprint of
the admin's password hash, or the API key id), so changing the password or
revoking the key ends the sessions it opened.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

COOKIE_NAME = "ocedge_session"


@dataclass(frozen=True)
class Session:
    subject: str  # "admin" or "key"
    expires: float
    binding: str  # password fingerprint or key id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_fingerprint(password_hash: bytes) -> str:
    return hashlib.blake2b(password_hash, digest_size=8, person=b"ocedge-pwfp").hexdigest()


class SessionSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, session: Session) -> str:
        payload = _b64(json.dumps(
            {"s": session.subject, "e": int(session.expires), "b": session.binding},
            separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, value: str, now: float) -> Session | None:
        payload, _, signature = value.partition(".")
        if not payload or not signature or len(value) > 512:
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(str(data["s"]), float(data["e"]), str(data["b"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if now < session.expires else None


def set_cookie_header(value: str, max_age: int, secure: bool) -> bytes:
    parts = [f"{COOKIE_NAME}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


def clear_cookie_header(secure: bool) -> bytes:
    return set_cookie_header("", 0, secure)


def split_cookie_header(header: str) -> tuple[str | None, str]:
    """(our session cookie's value, the cookie header without it)."""
    ours: str | None = None
    kept = []
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME:
            ours = value
        elif name:
            kept.append(part.strip())
    return ours, "; ".join(kept)
