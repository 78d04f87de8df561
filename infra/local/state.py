"""StateStore on the local SQLite file: one row, conditional writes."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time

from infra.interfaces import ContainerState, Status
from infra.local.db import Database


def _load(doc: str) -> ContainerState:
    known = {f.name for f in dataclasses.fields(ContainerState)}
    values = {k: v for k, v in json.loads(doc).items() if k in known}
    values["status"] = Status(values.get("status", Status.STOPPED))
    # JSON has no tuples: the steps come back as lists.
    values["steps"] = tuple((str(step), float(at)) for step, at in values.get("steps", ()))
    return ContainerState(**values)


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
                     expected_status: tuple[Status, ...] | None = None) -> bool:
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
                _audit(conn, new.lease_owner or "-", "put", new.status, new.generation)
            return written

        # The write and its audit row in one transaction: a reader never sees one
        # without the other.
        return await self.db.atransaction(write)

    async def extend_deadline(self, generation: int, deadline: float, now: float,
                              writer: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            written = conn.execute(
                "UPDATE state SET doc = json_set(doc, '$.deadline', ?, '$.last_activity', ?) "
                "WHERE id = 1 AND generation = ? AND status = ? "
                "AND COALESCE(json_extract(doc, '$.deadline'), 0) < ?",
                (deadline, now, generation, Status.RUNNING, deadline)).rowcount == 1
            if written:
                _audit(conn, writer, "deadline", Status.RUNNING, generation)
            return written

        # The write and its audit row in one transaction: a reader never sees one
        # without the other.
        return await self.db.atransaction(write)


def _audit(conn: sqlite3.Connection, writer: str, kind: str, status: str,
           generation: int) -> None:
    conn.execute("INSERT INTO state_writes (at, writer, kind, status, generation) "
                 "VALUES (?, ?, ?, ?, ?)", (time.time(), writer, kind, status, generation))
