"""StateStore on the local SQLite file: one row, conditional writes."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time

from infra.interfaces import ContainerState
from infra.local.db import Database


def _load(doc: str) -> ContainerState:
    known = {f.name for f in dataclasses.fields(ContainerState)}
    return ContainerState(**{k: v for k, v in json.loads(doc).items() if k in known})


class LocalStateStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.run(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO state (id, doc, generation, status) VALUES (1, ?, 0, ?)",
            (json.dumps(dataclasses.asdict(ContainerState())), ContainerState().status)))

    async def get(self) -> ContainerState:
        row = await self.db.arun(
            lambda conn: conn.execute("SELECT doc FROM state WHERE id = 1").fetchone())
        return _load(row[0])

    async def put_if(self, expected_generation: int, new: ContainerState,
                     expected_status: tuple[str, ...] | None = None) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            sql = ("UPDATE state SET doc = ?, generation = ?, status = ? "
                   "WHERE id = 1 AND generation = ?")
            args: list[object] = [json.dumps(dataclasses.asdict(new)), new.generation,
                                  new.status, expected_generation]
            if expected_status is not None:
                sql += f" AND status IN ({', '.join('?' * len(expected_status))})"
                args.extend(expected_status)
            written = conn.execute(sql, args).rowcount == 1
            if written:
                _audit(conn, new.lease_owner or "-", "put", new.status)
            return written

        # The write and its audit row in one transaction: a reader never sees one
        # without the other.
        return await self.db.atransaction(write)

    async def extend_deadline(self, generation: int, deadline: float, now: float,
                              writer: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            written = conn.execute(
                "UPDATE state SET doc = json_set(doc, '$.deadline', ?, '$.last_activity', ?) "
                "WHERE id = 1 AND generation = ? AND status = 'running' "
                "AND COALESCE(json_extract(doc, '$.deadline'), 0) < ?",
                (deadline, now, generation, deadline)).rowcount == 1
            if written:
                _audit(conn, writer, "deadline", "running")
            return written

        # The write and its audit row in one transaction: a reader never sees one
        # without the other.
        return await self.db.atransaction(write)

    def writes(self, kind: str | None = None) -> list[tuple[float, str, str, str]]:
        """The audit of successful writes (tests and debugging count them)."""
        sql = "SELECT at, writer, kind, status FROM state_writes"
        args: tuple[str, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        return self.db.run(lambda conn: conn.execute(sql + " ORDER BY at", args).fetchall())


def _audit(conn: sqlite3.Connection, writer: str, kind: str, status: str) -> None:
    conn.execute("INSERT INTO state_writes (at, writer, kind, status) VALUES (?, ?, ?, ?)",
                 (time.time(), writer, kind, status))
