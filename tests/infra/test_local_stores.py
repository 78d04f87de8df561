"""The local backends on SQLite behave like the DynamoDB ones: conditional state writes
that never go back, statuses read back as the enum, keys stored without their secret."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from infra.credentials import mint_api_key
from infra.interfaces import ContainerState, Status
from infra.local.db import Database
from infra.local.keys import LocalKeyStore
from infra.local.state import LocalStateStore

pytestmark = pytest.mark.unit


def test_the_state_item_is_written_only_on_the_expected_generation_and_status(
        tmp_path: Path) -> None:
    state = LocalStateStore(Database(tmp_path / "ocedge.db"))
    assert asyncio.run(state.get()) == ContainerState()
    starting = ContainerState(status=Status.STARTING, generation=1, lease_owner="edge")
    assert asyncio.run(state.put_if(0, starting, (Status.RUNNING,))) is False
    assert asyncio.run(state.put_if(0, starting, (Status.STOPPED,))) is True
    assert asyncio.run(state.put_if(0, starting, (Status.STOPPED,))) is False
    read = asyncio.run(state.get())
    assert read == starting
    assert type(read.status) is Status


def test_the_local_deadline_only_moves_up_for_the_running_generation(tmp_path: Path) -> None:
    state = LocalStateStore(Database(tmp_path / "ocedge.db"))
    running = ContainerState(status=Status.RUNNING, generation=1, deadline=100.0)
    asyncio.run(state.put_if(0, running))
    assert asyncio.run(state.extend_deadline(1, 200.0, 2.0, "edge")) is True
    assert asyncio.run(state.extend_deadline(1, 150.0, 3.0, "edge")) is False
    assert asyncio.run(state.extend_deadline(2, 900.0, 3.0, "edge")) is False
    assert asyncio.run(state.get()).deadline == 200.0
    stopping = dataclasses.replace(asyncio.run(state.get()), status=Status.STOPPING)
    asyncio.run(state.put_if(1, stopping))
    assert asyncio.run(state.extend_deadline(1, 900.0, 4.0, "edge")) is False


def test_api_keys_round_trip_without_their_secret(tmp_path: Path) -> None:
    keys = LocalKeyStore(Database(tmp_path / "ocedge.db"))
    new = mint_api_key("laptop", b"p" * 32, now=10.0)
    asyncio.run(keys.put_key(new.record))
    assert asyncio.run(keys.get_key(new.record.id)) == new.record
    with pytest.raises(ValueError, match="exists"):
        asyncio.run(keys.put_key(new.record))
    assert asyncio.run(keys.revoke_key(new.record.id, 20.0)) is True
    assert asyncio.run(keys.revoke_key(new.record.id, 30.0)) is True
    assert asyncio.run(keys.get_key(new.record.id)).revoked == 20.0  # type: ignore[union-attr]
    assert asyncio.run(keys.revoke_key("nope", 30.0)) is False


def test_the_database_and_its_wal_files_are_only_the_owners(tmp_path: Path) -> None:
    """It holds the admin password's hash, the key hashes and the sealed values."""
    old = tmp_path / "old" / "ocedge.db"
    old.parent.mkdir()
    old.touch(mode=0o644)  # made by an earlier version
    previous = os.umask(0o022)
    try:
        for path in (tmp_path / "new" / "ocedge.db", old):
            db = Database(path)
            keys = LocalKeyStore(db)
            asyncio.run(keys.count_failure("ip:192.0.2.1", 1000.0, 300.0))
            files = [path, path.with_name("ocedge.db-wal"), path.with_name("ocedge.db-shm")]
            assert all(f.exists() for f in files)
            assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
                f.name: "0o600" for f in files}
            db.close()
    finally:
        os.umask(previous)
