"""KeyStore on the local SQLite file."""

from __future__ import annotations

import sqlite3
from typing import Any

from infra.agent_secrets import AgentSecret
from infra.interfaces import AdminUser, ApiKeyRecord, Failures, ProviderCredential
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

    async def rehash_key(self, key_id: str, expected: bytes, new: bytes) -> bool:
        cursor = await self.db.arun(lambda conn: conn.execute(
            "UPDATE api_keys SET secret_hash = ? WHERE id = ? AND secret_hash = ?",
            (new, key_id, expected)))
        return cursor.rowcount == 1

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

    async def reseal_provider(self, provider: str, expected: bytes, sealed: bytes) -> bool:
        cursor = await self.db.arun(lambda conn: conn.execute(
            "UPDATE provider_keys SET sealed = ? WHERE provider = ? AND sealed = ?",
            (sealed, provider, expected)))
        return cursor.rowcount == 1

    # -- agent secrets ---------------------------------------------------------------

    async def put_secret(self, name: str, sealed: bytes, when: float) -> None:
        await self.db.arun(lambda conn: conn.execute(
            "INSERT INTO agent_secrets (name, sealed, created, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, "
            "updated = excluded.updated", (name, sealed, when, when)))

    async def list_secrets(self) -> list[AgentSecret]:
        rows = await self.db.arun(lambda conn: conn.execute(
            "SELECT name, sealed, created, updated FROM agent_secrets ORDER BY name").fetchall())
        return [AgentSecret(str(n), bytes(s), float(c), float(u)) for n, s, c, u in rows]

    async def remove_secret(self, name: str) -> bool:
        cursor = await self.db.arun(lambda conn: conn.execute(
            "DELETE FROM agent_secrets WHERE name = ?", (name,)))
        return cursor.rowcount == 1

    async def reseal_secret(self, name: str, expected: bytes, sealed: bytes) -> bool:
        cursor = await self.db.arun(lambda conn: conn.execute(
            "UPDATE agent_secrets SET sealed = ? WHERE name = ? AND sealed = ?",
            (sealed, name, expected)))
        return cursor.rowcount == 1

    # -- browser sessions, 2FA, failed logins ---------------------------------------

    async def session_epoch(self) -> int:
        row = await self.db.arun(lambda conn: conn.execute(
            "SELECT session_epoch FROM login WHERE id = 1").fetchone())
        return int(row[0]) if row else 0

    async def end_sessions(self) -> int:
        def bump(conn: sqlite3.Connection) -> int:
            conn.execute(_LOGIN_ROW)
            conn.execute("UPDATE login SET session_epoch = session_epoch + 1 WHERE id = 1")
            return int(conn.execute("SELECT session_epoch FROM login WHERE id = 1").fetchone()[0])

        return await self.db.atransaction(bump)

    async def get_totp(self) -> bytes | None:
        row = await self.db.arun(lambda conn: conn.execute(
            "SELECT totp_sealed FROM login WHERE id = 1").fetchone())
        return bytes(row[0]) if row and row[0] is not None else None

    async def set_totp(self, sealed: bytes | None) -> None:
        def store(conn: sqlite3.Connection) -> None:
            conn.execute(_LOGIN_ROW)
            conn.execute("UPDATE login SET totp_sealed = ?, totp_step = 0 WHERE id = 1", (sealed,))

        await self.db.atransaction(store)

    async def use_totp_step(self, step: int) -> bool:
        def use(conn: sqlite3.Connection) -> bool:
            conn.execute(_LOGIN_ROW)
            cursor = conn.execute(
                "UPDATE login SET totp_step = ? WHERE id = 1 AND totp_step < ?", (step, step))
            return cursor.rowcount == 1

        return await self.db.atransaction(use)

    async def count_failure(self, name: str, now: float, window: float) -> Failures:
        def count(conn: sqlite3.Connection) -> Failures:
            # Windows that have passed are worth nothing: drop them as we go.
            conn.execute("DELETE FROM login_failures WHERE since <= ?", (now - window,))
            conn.execute(
                "INSERT INTO login_failures (name, count, since) VALUES (?, 1, ?) "
                "ON CONFLICT (name) DO UPDATE SET count = count + 1", (name, now))
            row = conn.execute("SELECT count, since FROM login_failures WHERE name = ?",
                               (name,)).fetchone()
            return Failures(int(row[0]), float(row[1]))

        return await self.db.atransaction(count)

    async def forgive_failure(self, name: str, since: float) -> None:
        await self.db.arun(lambda conn: conn.execute(
            "UPDATE login_failures SET count = count - 1 "
            "WHERE name = ? AND since = ? AND count > 0", (name, since)))

    async def get_failures(self, name: str) -> Failures | None:
        row = await self.db.arun(lambda conn: conn.execute(
            "SELECT count, since FROM login_failures WHERE name = ?", (name,)).fetchone())
        return Failures(int(row[0]), float(row[1])) if row else None

    async def clear_failures(self, name: str) -> None:
        await self.db.arun(lambda conn: conn.execute(
            "DELETE FROM login_failures WHERE name = ?", (name,)))


# The one login row, made the first time something is stored in it.
_LOGIN_ROW = "INSERT OR IGNORE INTO login (id) VALUES (1)"


def _provider(row: tuple[Any, ...]) -> ProviderCredential:
    provider, sealed, created, updated = row
    return ProviderCredential(provider=str(provider), sealed=bytes(sealed),
                              created=float(created), updated=float(updated))
