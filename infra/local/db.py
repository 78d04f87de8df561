"""One SQLite file shared by the edge, the container and the CLI processes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS admin (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    username TEXT NOT NULL,
    password_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    last_used REAL,
    scopes TEXT NOT NULL DEFAULT 'all'  -- unused; kept so older databases need no migration
);
CREATE TABLE IF NOT EXISTS provider_keys (
    provider TEXT PRIMARY KEY,
    sealed BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
-- Agent secrets (infra/agent_secrets.py), sealed like the provider keys.
CREATE TABLE IF NOT EXISTS agent_secrets (
    name TEXT PRIMARY KEY,
    sealed BLOB NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
-- Browser sessions and 2FA: one row (id 1), made on first use.
CREATE TABLE IF NOT EXISTS login (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    session_epoch INTEGER NOT NULL DEFAULT 0,
    totp_sealed BLOB,
    totp_step INTEGER NOT NULL DEFAULT 0
);
-- Failed logins per client address (and "global"), in fixed windows.
CREATE TABLE IF NOT EXISTS login_failures (
    name TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state_writes (
    at REAL NOT NULL,
    writer TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    doc TEXT NOT NULL,
    generation INTEGER NOT NULL,
    status TEXT NOT NULL
);
"""


class Database:
    """A serialised connection; calls run in a worker thread off the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # The admin password's hash, the key hashes and sealed values: the owner's
        # only. SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if name.exists() and name.stat().st_uid == os.geteuid():
                os.chmod(name, 0o600)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=10, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(state_writes)")}
        if "generation" not in columns:  # a database made before the audit had it
            self._conn.execute(
                "ALTER TABLE state_writes ADD COLUMN generation INTEGER NOT NULL DEFAULT 0")

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._conn)

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one write transaction: its statements land together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    async def atransaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self.transaction, fn)

    async def arun(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self.run, fn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_open: dict[Path, Database] = {}
_open_lock = threading.Lock()


def database(state_dir: Path) -> Database:
    """The process-wide connection to ``state_dir``'s database."""
    path = (state_dir / "ocedge.db").resolve()
    with _open_lock:
        if path not in _open:
            _open[path] = Database(path)
        return _open[path]
