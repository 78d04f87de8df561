"""What every key store keeps for browser logins, the same way on SQLite, DynamoDB
(moto) and in memory: the session epoch (only ever goes up), the sealed TOTP secret
with its used-code step (each step once), and failed-login counters in fixed windows
— atomic, so edges counting at once never lose a failure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.aws.client import AioApi, Boto3Api
from infra.aws.keys import DynamoDBKeyStore
from infra.interfaces import Failures, KeyStore
from infra.local.db import Database
from infra.local.keys import LocalKeyStore
from tests.support.aws import (
    KEYS_TABLE,
    REGION,
    MotoServer,
    aws_credentials,
    create_tables,
    moto,
    moto_server,
)
from tests.support.memory import MemoryKeyStore

__all__ = ["aws_credentials", "moto", "moto_server"]  # fixtures



@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def keys(request: pytest.FixtureRequest, tmp_path: Path,
         aws_credentials: None) -> Iterator[KeyStore]:
    if request.param == "memory":
        yield MemoryKeyStore()
    elif request.param == "sqlite":
        yield LocalKeyStore(Database(tmp_path / "ocedge.db"))
    else:
        with mock_aws():
            create_tables(boto3.client("dynamodb", region_name=REGION))
            yield DynamoDBKeyStore(Boto3Api(REGION, None), KEYS_TABLE)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.unit
def test_the_session_epoch_starts_at_zero_and_only_goes_up(keys: KeyStore) -> None:
    assert run(keys.session_epoch()) == 0
    assert run(keys.end_sessions()) == 1
    assert run(keys.end_sessions()) == 2
    assert run(keys.session_epoch()) == 2


@pytest.mark.unit
def test_the_totp_secret_round_trips_and_each_step_is_used_once(keys: KeyStore) -> None:
    assert run(keys.get_totp()) is None
    run(keys.set_totp(b"sealed-secret"))
    assert run(keys.get_totp()) == b"sealed-secret"
    assert run(keys.use_totp_step(1000)) is True
    assert run(keys.use_totp_step(1000)) is False, "a code worked twice"
    assert run(keys.use_totp_step(999)) is False, "an older code worked after a newer one"
    assert run(keys.use_totp_step(1001)) is True
    # A new secret starts over; turning 2FA off forgets it.
    run(keys.set_totp(b"another"))
    assert run(keys.use_totp_step(5)) is True
    run(keys.set_totp(None))
    assert run(keys.get_totp()) is None
    # The epoch lives beside it and is untouched.
    assert run(keys.session_epoch()) == 0


@pytest.mark.unit
def test_failures_count_in_a_window_then_start_over(keys: KeyStore) -> None:
    assert run(keys.get_failures("ip:192.0.2.1")) is None
    assert run(keys.count_failure("ip:192.0.2.1", 1000.0, 300.0)) == Failures(1, 1000.0)
    assert run(keys.count_failure("ip:192.0.2.1", 1100.0, 300.0)) == Failures(2, 1000.0)
    assert run(keys.count_failure("global", 1100.0, 300.0)) == Failures(1, 1100.0)
    assert run(keys.get_failures("ip:192.0.2.1")) == Failures(2, 1000.0)
    # The window passed: a new one begins.
    assert run(keys.count_failure("ip:192.0.2.1", 1300.0, 300.0)) == Failures(1, 1300.0)
    run(keys.clear_failures("ip:192.0.2.1"))
    found = run(keys.get_failures("ip:192.0.2.1"))
    assert found is None or found.current(1300.0, 300.0) == 0
    run(keys.clear_failures("ip:203.0.113.1"))  # nothing to clear: no error, no counter
    assert run(keys.get_failures("ip:203.0.113.1")) is None
    assert run(keys.get_failures("global")) == Failures(1, 1100.0)


@pytest.mark.unit
def test_a_try_that_succeeded_is_taken_back_from_its_window_only(keys: KeyStore) -> None:
    """The throttle counts every try before checking it; one that succeeded is
    taken back, unless its window has meanwhile started over."""
    run(keys.count_failure("global", 1000.0, 300.0))
    run(keys.count_failure("global", 1001.0, 300.0))
    run(keys.forgive_failure("global", 1000.0))
    assert run(keys.get_failures("global")) == Failures(1, 1000.0)
    run(keys.forgive_failure("global", 999.0))  # another window: untouched
    assert run(keys.get_failures("global")) == Failures(1, 1000.0)
    run(keys.forgive_failure("global", 1000.0))
    run(keys.forgive_failure("global", 1000.0))  # never below zero
    found = run(keys.get_failures("global"))
    assert found is None or found.count == 0
    run(keys.forgive_failure("ip:203.0.113.2", 1000.0))  # nothing counted: no counter made
    assert run(keys.get_failures("ip:203.0.113.2")) is None


@pytest.mark.unit
def test_counting_from_many_threads_loses_nothing_on_sqlite(tmp_path: Path) -> None:
    # Two edge processes on one machine share the file; each counts from its threads.
    stores = [LocalKeyStore(Database(tmp_path / "ocedge.db")) for _ in range(2)]

    def count(store: LocalKeyStore) -> None:
        for _ in range(25):
            run(store.count_failure("global", 1000.0, 300.0))

    threads = [threading.Thread(target=count, args=(s,)) for s in stores for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert run(stores[0].get_failures("global")) == Failures(100, 1000.0)


def test_edges_counting_at_once_on_dynamodb_lose_nothing(moto: MotoServer) -> None:
    """Two edges (two aiobotocore clients) count failures concurrently, some of them
    across the start of a new window: every failure is counted exactly once."""
    create_tables(moto.client("dynamodb"))

    async def scenario() -> tuple[Failures | None, int]:
        edges = [DynamoDBKeyStore(AioApi(REGION, moto.url), KEYS_TABLE) for _ in range(2)]
        # An old window, so the first counts race to start the new one.
        await edges[0].count_failure("global", 0.0, 300.0)
        results = await asyncio.gather(*(edges[n % 2].count_failure("global", 1000.0, 300.0)
                                         for n in range(40)))
        final = await edges[0].get_failures("global")
        for edge in edges:
            await edge.api.aclose()  # type: ignore[attr-defined]
        return final, len({r.count for r in results})

    final, distinct = asyncio.run(scenario())
    assert final == Failures(40, 1000.0)
    assert distinct == 40, "two edges saw the same count: an increment was lost"


@pytest.mark.unit
def test_failure_counters_carry_a_ttl_for_dynamodb_to_tidy_up(aws_credentials: None) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        create_tables(client)
        keys = DynamoDBKeyStore(Boto3Api(REGION, None), KEYS_TABLE)
        run(keys.count_failure("ip:192.0.2.9", 1000.0, 300.0))
        item = client.get_item(TableName=KEYS_TABLE,
                               Key={"pk": {"S": "failures"}, "sk": {"S": "ip:192.0.2.9"}})["Item"]
        assert int(item["ttl"]["N"]) >= 1300
