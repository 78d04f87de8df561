"""Setting up the admin user that browser logins use."""

from __future__ import annotations

import hmac

from infra.credentials import generate_password, hash_password, verify_password
from infra.interfaces import AdminUser, KeyStore
from infra.settings import Settings


async def ensure_admin(settings: Settings, keys: KeyStore) -> str | None:
    """Make sure an admin exists; returns a newly generated password to print once.

    ``OCEDGE_ADMIN_PASSWORD`` wins when set (and replaces a different stored one);
    otherwise a strong password is generated the first time only.
    """
    current = await keys.get_admin()
    wanted = settings.admin_password
    if wanted is not None:
        same_user = current is not None and hmac.compare_digest(
            current.username.encode(), settings.admin_user.encode())
        if current is None or not same_user or not verify_password(
                current.password_hash, wanted):
            await keys.set_admin(AdminUser(settings.admin_user, hash_password(wanted)))
        return None
    if current is not None:
        if current.username != settings.admin_user:
            await keys.set_admin(AdminUser(settings.admin_user, current.password_hash))
        return None
    password = generate_password()
    await keys.set_admin(AdminUser(settings.admin_user, hash_password(password)))
    return password


MIN_PASSWORD_LENGTH = 12


def check_admin_password(password: str) -> str:
    """``password`` if it may be the admin password, else ValueError saying why."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the admin password must be at least {MIN_PASSWORD_LENGTH} characters")
    return password


async def set_admin_password(settings: Settings, keys: KeyStore, password: str) -> None:
    """Store ``password`` (checked by :func:`check_admin_password`) for the admin user."""
    check_admin_password(password)
    await keys.set_admin(AdminUser(settings.admin_user, hash_password(password)))
