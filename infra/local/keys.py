"""KeyStore on the local SQLite file."""

from __future__ import annotations

import sqlite3
from typing import Any

from infra.interfaces import AdminUser, ApiKeyRecord, ProviderCredential
from infra.local.db import Database

_COLUMNS = "id, name, secret_hash, created, expires, revoked, last_used"


def _record(row: tuple[Any, ...]) -> ApiKeyRecord:
    key_id, name, secret_hash, created, expires, revoked, last_used = row
    return ApiKeyRecord(
        id=str(key_id), name=str(name), secret_hash=bytes(secret_hash),
        created=float(created), expires=expires, revoked=revoked,
        last_used=last_used,
    )


class LocalKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_admin(self) -> AdminUser | None:
        def query(conn: sqlite3.Connection) -> AdminUser | None:
            row = conn.execute("SELECT username, password_hash FROM admin WHERE id = 1").fetchone()
            return AdminUser(row[0], bytes(row[1])) if row else None

        return await self.db.arun(query)

    async def set_admin(self, user: AdminUser) -> None:
        await self.db.arun(lambda conn: conn.execute(
            "INSERT INTO admin (id, username, password_hash) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET username = excluded.username, "
            "password_hash = excluded.password_hash",
            (user.username, user.password_hash)))

    async def put_key(self, record: ApiKeyRecord) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    (record.id, record.name, record.secret_hash, record.created,
                     record.expires, record.revoked, record.last_used))
            except sqlite3.IntegrityError:
                raise ValueError(f"an API key with id {record.id} exists") from None

        await self.db.arun(insert)

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        row = await self.db.arun(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone())  # noqa: S608
        return _record(row) if row else None

    async def list_keys(self) -> list[ApiKeyRecord]:
        rows = await self.db.arun(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys ORDER BY created").fetchall())  # noqa: S608
        return [_record(row) for row in rows]

    async def revoke_key(self, key_id: str, when: float) -> bool:
        cursor = await self.db.arun(lambda conn: conn.execute(
            "UPDATE api_keys SET revoked = COALESCE(revoked, ?) WHERE id = ?", (when, key_id)))
        return cursor.rowcount == 1

    async def touch_key(self, key_id: str, when: float) -> None:
        await self.db.arun(lambda conn: conn.execute(
            "UPDATE api_keys SET last_used = ? WHERE id = ?", (when, key_id)))

    async def put_provider(self, provider: str, sealed: bytes, when: float) -> None:
        await self.db.arun(lambda conn: conn.execute(
            "INSERT INTO provider_keys (provider, sealed, created, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (provider) DO UPDATE SET sealed = excluded.sealed, "
            "updated = excluded.updated", (provider, sealed, when, when)))

    async def get_provider(self, provider: str) -> ProviderCredential | None:
        row = await self.db.arun(lambda conn: conn.execute(
            "SELECT provider, sealed, created, updated FROM provider_keys WHERE provider = ?",
            (provider,)).fetchone())
        return _provider(row) if row else None

    async def list_providers(self) -> list[ProviderCredential]:
        rows = await self.db.arun(lambda conn: conn.execute(
            "SELECT provider, sealed, created, updated FROM provider_keys "
            "ORDER BY provider").fetchall())
        return [_provider(row) for row in rows]

    async def remove_provider(self, provider: str) -> bool:
        cursor = await self.db.arun(lambda conn: conn.execute(
            "DELETE FROM provider_keys WHERE provider = ?", (provider,)))
        return cursor.rowcount == 1


def _provider(row: tuple[Any, ...]) -> ProviderCredential:
    provider, sealed, created, updated = row
    return ProviderCredential(provider=str(provider), sealed=bytes(sealed),
                              created=float(created), updated=float(updated))
