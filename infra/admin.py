"""The admin login: its password, its two-factor secret and its browser sessions."""

from __future__ import annotations

import asyncio
import hmac
import time

from infra import totp
from infra.credentials import generate_password, hash_password, verify_password
from infra.interfaces import AdminUser, KeyStore
from infra.settings import MIN_PASSWORD_LENGTH, Settings

__all__ = ["MIN_PASSWORD_LENGTH", "check_admin_password", "disable_totp", "enable_totp",
           "ensure_admin", "logout_all", "set_admin_password"]


async def ensure_admin(settings: Settings, keys: KeyStore) -> str | None:
    """Make sure an admin exists; returns a newly generated password to print once.

    ``OCEDGE_ADMIN_PASSWORD`` wins when set (and replaces a different stored one,
    ending every session); otherwise a strong password is generated the first time only.
    """
    current = await keys.get_admin()
    wanted = settings.admin_password
    if wanted is not None:
        same_user = current is not None and hmac.compare_digest(
            current.username.encode(), settings.admin_user.encode())
        if current is None or not same_user or not await asyncio.to_thread(
                verify_password, current.password_hash, wanted):
            await keys.set_admin(AdminUser(settings.admin_user, hash_password(wanted)))
            if current is not None:
                await keys.end_sessions()
        return None
    if current is not None:
        if current.username != settings.admin_user:
            await keys.set_admin(AdminUser(settings.admin_user, current.password_hash))
        return None
    password = generate_password()
    await keys.set_admin(AdminUser(settings.admin_user, hash_password(password)))
    return password


def check_admin_password(password: str) -> str:
    """``password`` if it may be the admin password, else ValueError saying why."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the admin password must be at least {MIN_PASSWORD_LENGTH} characters")
    return password


async def set_admin_password(settings: Settings, keys: KeyStore, password: str) -> None:
    """Store ``password`` (checked by :func:`check_admin_password`) for the admin user
    and end every browser session."""
    check_admin_password(password)
    await keys.set_admin(AdminUser(settings.admin_user, hash_password(password)))
    await keys.end_sessions()


async def logout_all(keys: KeyStore) -> int:
    """End every browser session of the deployment; the new session epoch."""
    return await keys.end_sessions()


async def enable_totp(keys: KeyStore, session_secret: bytes, secret: str, code: str,
                      now: float | None = None) -> None:
    """Turn 2FA on with ``secret`` once ``code`` proves the app has it; ends every
    session (they were opened without a code). ValueError if the code is wrong."""
    now = time.time() if now is None else now
    step = totp.matching_step(secret, code, now)
    if step is None:
        raise ValueError("that code is not the current one: check the phone's clock and "
                         "that the app shows opencode-edge, then run the command again")
    await keys.set_totp(totp.seal_secret(session_secret, secret))
    # The code just typed cannot be replayed on the login page.
    await keys.use_totp_step(step)
    await keys.end_sessions()


async def disable_totp(keys: KeyStore, session_secret: bytes, proof: str,
                       now: float | None = None) -> None:
    """Turn 2FA off, given a current code or the admin password (``proof``); ends
    every session. ValueError if 2FA is off or the proof is wrong."""
    now = time.time() if now is None else now
    sealed = await keys.get_totp()
    if sealed is None:
        raise ValueError("two-factor login is not on")
    admin = await keys.get_admin()
    if not await _proves_admin(keys, session_secret, sealed, admin, proof, now):
        raise ValueError("that is neither a current code nor the admin password")
    await keys.set_totp(None)
    await keys.end_sessions()


async def _proves_admin(keys: KeyStore, session_secret: bytes, sealed: bytes,
                        admin: AdminUser | None, proof: str, now: float) -> bool:
    if totp.normalise(proof) is not None:
        try:
            step = totp.matching_step(totp.open_secret(session_secret, sealed), proof, now)
        except totp.TotpError:
            step = None  # an unopenable secret: only the password can turn it off
        if step is not None:
            return await keys.use_totp_step(step)
    return admin is not None and await asyncio.to_thread(
        verify_password, admin.password_hash, proof)
