"""Who is asking: the session cookie (browsers), API keys, and Basic for programs.

Browsers log in on the login page (:meth:`Authenticator.login`: the admin user and
password, plus a one-time code when 2FA is on, or an API key as the password) and
then send the session cookie. Programs send an API key (Bearer, X-API-Key, or as the
Basic password) or, while 2FA is off, the admin password over Basic.

Every comparison of a secret is constant-time. The slow argon2id check of the admin
password runs in a worker thread, only when the throttle allows a try (counted
before it runs: see edge/throttle.py), at most ``ARGON2_AT_ONCE`` at a time, and its
success is remembered (keyed by a process-local hash of the credentials) so a
program that sends Basic on every request pays for it once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge.session import Session, SessionSigner, password_fingerprint
from edge.throttle import FailureThrottle
from infra import totp
from infra.credentials import check_api_key, looks_like_api_key, parse_api_key, verify_password
from infra.interfaces import AdminUser, ApiKeyRecord, KeyStore
from infra.secrets import Peppers

log = logging.getLogger("ocedge.edge")

# How often a key's last-used time is written.
_TOUCH_EVERY = 300.0
# argon2id checks running at once in this process: a burst waits rather than
# taking every core (each check is ~50 ms of one core and 64 MiB).
ARGON2_AT_ONCE = 2


@dataclass(frozen=True)
class Identity:
    subject: str  # "admin" or "key"
    binding: str  # password fingerprint or key id
    method: str  # "password", "key" or "cookie"


@dataclass(frozen=True)
class AuthResult:
    identity: Identity | None = None
    # When identity is None: "missing", "invalid", "throttled", "uninitialised" or
    # "totp_required" (the admin password over Basic while 2FA is on).
    failure: str = ""
    retry_after: int = 0


@dataclass(frozen=True)
class Presented:
    """The credentials a request carries, taken from its headers."""

    cookie: bytes | None = None
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    malformed: bool = False

    @property
    def any(self) -> bool:
        return self.malformed or self.password is not None or self.api_key is not None


def read_credentials(headers: list[tuple[bytes, bytes]], cookie: bytes | None,
                     basic: bool = True) -> Presented:
    """The credentials in ``headers`` besides the session cookie (read by the caller,
    who knows its name). Without ``basic`` (a browser's request) Basic is ignored:
    a browser logs in on the login page, and Basic credentials it cached must not
    log it back in after a logout."""
    found: dict[bytes, str] = {}
    for name, raw in headers:
        if name in (b"x-api-key", b"authorization"):
            if name in found:  # two of them: which one would count is anyone's guess
                return Presented(cookie=cookie, malformed=True)
            found[name] = bytes(raw).decode("latin-1")
    api_key = found.get(b"x-api-key")
    if api_key is not None:
        return Presented(cookie=cookie, api_key=api_key.strip())
    auth = found.get(b"authorization")
    if auth is None:
        return Presented(cookie=cookie)
    scheme, _, value = auth.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return Presented(cookie=cookie, api_key=value)
    if scheme == "basic" and not basic:
        return Presented(cookie=cookie)
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
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
    """Records from the key store, re-read after ``ttl``."""

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
    """Checks credentials against the key store (cached briefly) and the session
    signer; counts failures in the throttle."""

    def __init__(self, keys: KeyStore, pepper: bytes | Peppers, signer: SessionSigner,
                 throttle: FailureThrottle, session_secret: bytes = b"",
                 cache_ttl: float = 30.0) -> None:
        self.keys = keys
        self.pepper = pepper
        self.signer = signer
        self.throttle = throttle
        self._session_secret = session_secret  # opens the sealed TOTP secret
        self._cache = _TTLCache(cache_ttl)
        self._touched: dict[str, float] = {}
        # Remembered successful password checks: digest → admin hash they matched.
        self._verified: dict[bytes, bytes] = {}
        self._local_key = secrets.token_bytes(32)
        self._argon2: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def use_secrets(self, pepper: bytes | Peppers, session_secret: bytes) -> None:
        """Check API keys and cookies with the edge's secrets as rotated
        (infra/rotation.py): cookies signed with the old key stop passing."""
        self.pepper = pepper
        self.signer = SessionSigner(session_secret, self.signer.ttl)
        self._session_secret = session_secret

    async def _cached(self, name: str, now: float,
                      read: Callable[[], Awaitable[object]]) -> object:
        hit, value = self._cache.get(name, now)
        if not hit:
            value = await read()
            self._cache.put(name, value, now)
        return value

    async def admin(self, now: float) -> AdminUser | None:
        value = await self._cached("admin", now, self.keys.get_admin)
        return value if isinstance(value, AdminUser) else None

    async def totp_on(self, now: float) -> bool:
        return await self._cached("totp", now, self.keys.get_totp) is not None

    async def _epoch(self, now: float) -> int:
        value = await self._cached("epoch", now, self.keys.session_epoch)
        return value if isinstance(value, int) else 0

    async def _key(self, key_id: str, now: float) -> ApiKeyRecord | None:
        value = await self._cached("key:" + key_id, now, lambda: self.keys.get_key(key_id))
        return value if isinstance(value, ApiKeyRecord) else None

    # -- the request path --------------------------------------------------------------

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
        if presented.api_key is not None:
            return await self._key_login(presented.api_key, client, now)
        if presented.password is not None and presented.username is not None:
            if await self.totp_on(now):
                # The password alone is not enough, and we do not run argon2 to say so.
                return AuthResult(failure="totp_required")
            return await self._password_login(admin, presented.username, presented.password,
                                              None, client, now)
        await self.throttle.record_failure(client, now)
        return AuthResult(failure="invalid")

    async def _check_cookie(self, value: bytes, admin: AdminUser, now: float) -> Identity | None:
        session = self.signer.verify(value, now)
        if session is None or session.epoch != await self._epoch(now):
            return None
        if session.subject == "admin":
            fingerprint = password_fingerprint(admin.password_hash)
            if hmac.compare_digest(session.binding.encode(), fingerprint.encode()):
                return Identity("admin", session.binding, "cookie")
            return None
        if session.subject == "key":
            record = await self._key(session.binding, now)
            if record is not None and record.usable_at(now):
                return Identity("key", record.id, "cookie")
        return None

    async def _key_login(self, value: str, client: str, now: float) -> AuthResult:
        # Never throttled: a key's secret is 256 random bits, and checking it is cheap.
        identity = await self._check_key(value, now)
        if identity is None:
            await self.throttle.record_failure(client, now)
            return AuthResult(failure="invalid")
        return AuthResult(identity)

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

    # -- the login page --------------------------------------------------------------

    async def login(self, username: str, password: str, code: str, client: str,
                    now: float | None = None) -> AuthResult:
        """A login from the form: the admin (with a code when 2FA is on), or an API
        key typed as the password."""
        now = time.time() if now is None else now
        admin = await self.admin(now)
        if admin is None:
            return AuthResult(failure="uninitialised")
        if looks_like_api_key(password):
            return await self._key_login(password, client, now)
        required = await self.keys.get_totp() is not None
        return await self._password_login(admin, username, password,
                                          code if required else None, client, now)

    async def _password_login(self, admin: AdminUser, username: str, password: str,
                              code: str | None, client: str, now: float) -> AuthResult:
        """The admin password (and, when ``code`` is not None, the one-time code)."""
        user_ok = hmac.compare_digest(username.encode(), admin.username.encode())
        digest = hashlib.blake2b(f"{username}\0{password}".encode(), key=self._local_key).digest()
        remembered = self._verified.get(digest)
        known = remembered is not None and hmac.compare_digest(remembered, admin.password_hash)
        attempt = None
        if not known or code is not None:
            # A password proven before costs no argon2 and needs no throttle; a code
            # always does (its guesses are what the throttle is for, then).
            attempt = await self.throttle.begin(client, now)
            if attempt.retry_after is not None:
                log.info("password login from %s refused for %d s: too many failures",
                         client, attempt.retry_after)
                return AuthResult(failure="throttled", retry_after=attempt.retry_after)
        if known:
            ok = True
        else:
            async with self._argon2_slot():
                ok = await asyncio.to_thread(verify_password, admin.password_hash, password)
            if ok and user_ok:
                if len(self._verified) > 1000:
                    self._verified.clear()
                self._verified[digest] = admin.password_hash
        ok = ok and user_ok
        if ok and code is not None:
            ok = await self._check_code(code, now)
        if not ok:
            log.info("failed password login from %s", client)  # counted in begin()
            return AuthResult(failure="invalid")
        if attempt is not None:
            await self.throttle.succeeded(client, attempt, now)
        else:
            await self.throttle.record_success(client, now)
        return AuthResult(Identity("admin", password_fingerprint(admin.password_hash),
                                   "password"))

    def _argon2_slot(self) -> asyncio.Semaphore:
        """This loop's semaphore of argon2 checks (a semaphore belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._argon2 is None or self._argon2[0] is not loop:
            self._argon2 = (loop, asyncio.Semaphore(ARGON2_AT_ONCE))
        return self._argon2[1]

    async def _check_code(self, code: str, now: float) -> bool:
        sealed = await self.keys.get_totp()
        if sealed is None:
            return True  # turned off meanwhile
        try:
            secret = totp.open_secret(self._session_secret, sealed)
        except totp.TotpError as exc:
            log.error("two-factor login cannot work: %s", exc)
            return False
        step = totp.matching_step(secret, code, now)
        # Each code logs in once, on every edge instance.
        return step is not None and await self.keys.use_totp_step(step)

    # -- sessions --------------------------------------------------------------------

    async def issue_cookie(self, identity: Identity, now: float) -> str:
        """A session cookie's value for ``identity``, in the current session epoch."""
        epoch = await self.keys.session_epoch()
        self._cache.put("epoch", epoch, now)
        return self.signer.issue(Session(identity.subject, now + self.signer.ttl,
                                         identity.binding, epoch))

    async def check_cookie(self, value: bytes, now: float) -> Identity | None:
        """The identity a session cookie stands for now, or None."""
        admin = await self.admin(now)
        return None if admin is None else await self._check_cookie(value, admin, now)

    async def end_sessions(self, now: float) -> None:
        """Log out: end every session (this process notices at once, others within
        the cache time)."""
        self._cache.put("epoch", await self.keys.end_sessions(), now)
