"""Who is asking: Basic for the admin, API keys, or the session cookie.

Every comparison of a secret is constant-time. The slow argon2id check of the
admin password runs in a worker thread and its success is remembered (keyed by a
process-local hash of the credentials) so a browser that sends Basic on every
request pays for it once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from edge.session import Session, SessionSigner, password_fingerprint, split_cookie_header
from edge.throttle import FailureThrottle
from infra.credentials import check_api_key, looks_like_api_key, parse_api_key, verify_password
from infra.interfaces import AdminUser, ApiKeyRecord, KeyStore

# How often a key's last-used time is written.
_TOUCH_EVERY = 300.0


@dataclass(frozen=True)
class Identity:
    subject: str  # "admin" or "key"
    binding: str  # password fingerprint or key id
    method: str  # "basic", "key" or "cookie"


@dataclass(frozen=True)
class AuthResult:
    identity: Identity | None = None
    # When identity is None: "missing", "invalid", "throttled" or "uninitialised".
    failure: str = ""
    retry_after: int = 0


@dataclass(frozen=True)
class Presented:
    """The credentials a request carries, taken from its headers."""

    cookie: str | None = None
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    malformed: bool = False

    @property
    def any(self) -> bool:
        return self.malformed or self.password is not None or self.api_key is not None


def read_credentials(headers: dict[bytes, bytes]) -> Presented:
    cookie_header = headers.get(b"cookie")
    cookie = split_cookie_header(cookie_header.decode("latin-1"))[0] if cookie_header else None
    api_key = headers.get(b"x-api-key")
    if api_key is not None:
        return Presented(cookie=cookie, api_key=api_key.decode("latin-1").strip())
    auth = headers.get(b"authorization")
    if auth is None:
        return Presented(cookie=cookie)
    scheme, _, value = auth.decode("latin-1").strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return Presented(cookie=cookie, api_key=value)
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Presented(cookie=cookie, malformed=True)
        username, sep, password = decoded.partition(":")
        if not sep:
            return Presented(cookie=cookie, malformed=True)
        if looks_like_api_key(password):
            # Any username with an API key as the password: opencode attach, SDKs.
            return Presented(cookie=cookie, username=username, api_key=password)
        return Presented(cookie=cookie, username=username, password=password)
    return Presented(cookie=cookie, malformed=True)


class _TTLCache:
    """The admin record and key records, re-read from the store after ``ttl``."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[str, tuple[float, object]] = {}

    def get(self, name: str, now: float) -> tuple[bool, object]:
        hit = self._items.get(name)
        if hit is None or now - hit[0] > self.ttl:
            return False, None
        return True, hit[1]

    def put(self, name: str, value: object, now: float) -> None:
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[name] = (now, value)


class Authenticator:
    """Checks presented credentials against the key store (cached briefly) and
    the session signer; counts failures in the throttle."""

    def __init__(self, keys: KeyStore, pepper: bytes, signer: SessionSigner,
                 throttle: FailureThrottle, cache_ttl: float = 30.0) -> None:
        self.keys = keys
        self.pepper = pepper
        self.signer = signer
        self.throttle = throttle
        self._cache = _TTLCache(cache_ttl)
        self._touched: dict[str, float] = {}
        # Remembered successful password checks: digest → admin hash they matched.
        self._verified: dict[bytes, bytes] = {}
        self._local_key = secrets.token_bytes(32)

    async def admin(self, now: float) -> AdminUser | None:
        hit, value = self._cache.get("admin", now)
        if not hit:
            value = await self.keys.get_admin()
            self._cache.put("admin", value, now)
        return value if isinstance(value, AdminUser) else None

    async def _key(self, key_id: str, now: float) -> ApiKeyRecord | None:
        hit, value = self._cache.get("key:" + key_id, now)
        if not hit:
            value = await self.keys.get_key(key_id)
            self._cache.put("key:" + key_id, value, now)
        return value if isinstance(value, ApiKeyRecord) else None

    async def authenticate(self, presented: Presented, client: str,
                           now: float | None = None) -> AuthResult:
        now = time.time() if now is None else now
        admin = await self.admin(now)
        if admin is None:
            return AuthResult(failure="uninitialised")
        if presented.cookie:
            identity = await self._check_cookie(presented.cookie, admin, now)
            if identity is not None:
                return AuthResult(identity)
        if not presented.any:
            return AuthResult(failure="missing")
        retry = self.throttle.retry_after(client, now)
        if retry is not None:
            return AuthResult(failure="throttled", retry_after=retry)
        identity = None
        if presented.api_key is not None:
            identity = await self._check_key(presented.api_key, now)
        elif presented.password is not None and presented.username is not None:
            identity = await self._check_password(admin, presented.username,
                                                  presented.password)
        if identity is None:
            self.throttle.record_failure(client, now)
            return AuthResult(failure="invalid")
        self.throttle.record_success(client)
        return AuthResult(identity)

    async def _check_cookie(self, value: str, admin: AdminUser, now: float) -> Identity | None:
        session = self.signer.verify(value, now)
        if session is None:
            return None
        if session.subject == "admin":
            fingerprint = password_fingerprint(admin.password_hash)
            if hmac.compare_digest(session.binding, fingerprint):
                return Identity("admin", session.binding, "cookie")
            return None
        if session.subject == "key":
            record = await self._key(session.binding, now)
            if record is not None and record.usable_at(now):
                return Identity("key", record.id, "cookie")
        return None

    async def _check_key(self, value: str, now: float) -> Identity | None:
        parsed = parse_api_key(value)
        if parsed is None:
            return None
        key_id, secret = parsed
        record = await self._key(key_id, now)
        if not check_api_key(secret, record, self.pepper, now) or record is None:
            return None
        if now - self._touched.get(key_id, 0.0) > _TOUCH_EVERY:
            self._touched[key_id] = now
            await self.keys.touch_key(key_id, now)
        return Identity("key", key_id, "key")

    async def _check_password(self, admin: AdminUser, username: str,
                              password: str) -> Identity | None:
        user_ok = hmac.compare_digest(username.encode(), admin.username.encode())
        digest = hashlib.blake2b(f"{username}\0{password}".encode(), key=self._local_key).digest()
        remembered = self._verified.get(digest)
        if remembered is not None and hmac.compare_digest(remembered, admin.password_hash):
            ok = True
        else:
            ok = await asyncio.to_thread(verify_password, admin.password_hash, password)
            if ok and user_ok:
                if len(self._verified) > 1000:
                    self._verified.clear()
                self._verified[digest] = admin.password_hash
        if not (ok and user_ok):
            return None
        return Identity("admin", password_fingerprint(admin.password_hash), "basic")

    def session_for(self, identity: Identity, ttl: float, now: float) -> Session:
        return Session(identity.subject, now + ttl, identity.binding)
