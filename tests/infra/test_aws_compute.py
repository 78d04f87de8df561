"""The EC2 controller, and the container's life through EC2 and the DynamoDB state item.

moto's instances jump straight to running or stopped; the in-between states
(pending, stopping) are put in place by hand to check the controller copes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.aws.client import AioApi, AwsApi, AwsError, Boto3Api
from infra.aws.compute import EC2_BUDGET, EC2Compute
from infra.aws.reaper_lambda import handler as reaper_handler
from infra.aws.state import DynamoDBStateStore
from infra.deadline import Deadline
from infra.interfaces import BackendError, ContainerState, Status
from infra.lifecycle import Lifecycle
from tests.support.aws import (
    REGION,
    STATE_TABLE,
    Deployment,
    MotoServer,
    aws_credentials,
    aws_settings,
    create_instance,
    create_tables,
    instance_state,
    moto,
    moto_server,
    set_instance_state,
)

__all__ = ["aws_credentials", "moto", "moto_server"]  # fixtures


class CountingApi:
    """An AwsApi that counts calls by operation, and can refuse some a few times."""

    def __init__(self, inner: AwsApi) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}
        self.refuse: dict[str, int] = {}
        self._lock = threading.Lock()

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
            refuse = self.refuse.get(operation, 0)
            if refuse:
                self.refuse[operation] = refuse - 1
        if refuse:
            raise AwsError(service, operation, "IncorrectInstanceState", "not now")
        return await self.inner.call(service, operation, **params)

    async def warm(self, services: tuple[str, ...]) -> None:
        await self.inner.warm(services)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def ec2(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def _compute(instance_id: str) -> tuple[EC2Compute, CountingApi]:
    api = CountingApi(Boto3Api(REGION, None))
    return EC2Compute(api, instance_id, poll=0.05, budget=EC2_BUDGET.scaled(0.05)), api


# -- start / stop / describe -----------------------------------------------------------


def test_start_and_stop_are_idempotent(ec2: Any) -> None:
    instance = create_instance(ec2)
    compute, api = _compute(instance)
    assert asyncio.run(compute.describe()).running is False
    asyncio.run(compute.start())
    assert instance_state(ec2, instance) == "running"
    asyncio.run(compute.start())
    assert api.calls.get("start_instances") == 1
    info = asyncio.run(compute.describe())
    assert info.running and instance in info.detail and "running" in info.detail
    assert (info.state, info.phase, compute.host) == ("running", "running", instance)
    asyncio.run(compute.stop())
    asyncio.run(compute.stop())
    assert instance_state(ec2, instance) == "stopped"
    assert api.calls.get("stop_instances") == 1


def test_start_while_stopping_waits_for_the_stop_then_starts(ec2: Any) -> None:
    instance = create_instance(ec2, state="running")
    set_instance_state(instance, "stopping")
    compute, api = _compute(instance)
    info = asyncio.run(compute.describe())
    assert (info.running, info.phase) == (False, "stopping")  # going away
    timer = threading.Timer(0.4, set_instance_state, (instance, "stopped"))
    timer.start()
    started = time.monotonic()
    asyncio.run(compute.start())
    timer.join()
    assert time.monotonic() - started >= 0.35, "started before the stop finished"
    assert api.calls.get("start_instances") == 1
    assert instance_state(ec2, instance) == "running"


def test_start_while_pending_is_a_no_op(ec2: Any) -> None:
    instance = create_instance(ec2, state="running")
    set_instance_state(instance, "pending")
    compute, api = _compute(instance)
    asyncio.run(compute.start())
    assert "start_instances" not in api.calls
    assert asyncio.run(compute.describe()).running is True


def test_stop_while_pending_retries_until_ec2_accepts_it(ec2: Any) -> None:
    instance = create_instance(ec2, state="running")
    set_instance_state(instance, "pending")
    compute, api = _compute(instance)
    api.refuse["stop_instances"] = 2  # EC2: "not in a state from which it can be stopped"
    asyncio.run(compute.stop())
    assert api.calls["stop_instances"] == 3
    assert instance_state(ec2, instance) == "stopped"
    assert asyncio.run(compute.state())[0] == "stopped"


def test_a_start_that_loses_a_race_looks_again(ec2: Any) -> None:
    instance = create_instance(ec2)
    compute, api = _compute(instance)
    api.refuse["start_instances"] = 1
    asyncio.run(compute.start())
    assert api.calls["start_instances"] == 2
    assert instance_state(ec2, instance) == "running"


def test_a_terminated_or_unknown_instance_is_a_clear_error(ec2: Any) -> None:
    instance = create_instance(ec2)
    ec2.terminate_instances(InstanceIds=[instance])
    compute, _ = _compute(instance)
    with pytest.raises(BackendError, match="terminated"):
        asyncio.run(compute.start())
    asyncio.run(compute.stop())  # nothing to stop: fine
    with pytest.raises(BackendError, match="'i-0123456789abcdef0' does not exist"):
        asyncio.run(_compute("i-0123456789abcdef0")[0].start())
    with pytest.raises(BackendError, match="OCEDGE_INSTANCE_ID"):
        asyncio.run(EC2Compute(Boto3Api(REGION, None), None).describe())


# -- the whole cycle -------------------------------------------------------------------


def test_wake_run_sleep_cycle_through_ec2_and_dynamodb(ec2: Any) -> None:
    create_tables(boto3.client("dynamodb", region_name=REGION))
    instance = create_instance(ec2)
    compute, _ = _compute(instance)
    store = DynamoDBStateStore(Boto3Api(REGION, None), STATE_TABLE)
    edge = Lifecycle(store, compute, owner="edge")
    container = Lifecycle(store, owner="container", host=instance)

    async def cycle() -> None:
        # The edge takes the start lease and powers the instance on.
        lease = await edge.begin_start()
        assert lease is not None and lease.status == Status.STARTING
        assert await Lifecycle(store, owner="another edge").begin_start() is None
        assert instance_state(ec2, instance) == "stopped"
        await compute.start()
        assert instance_state(ec2, instance) == "running"
        assert (await store.get()).status == Status.STARTING

        # The container boots, claims the start asked of its instance (the item says
        # which, and DynamoDB keeps the steps), and registers under a newer generation.
        assert (await store.get()).host == instance
        assert [step for step, _ in (await store.get()).steps] == ["wake requested"]
        claim = await container.claim()
        assert claim is not None and claim.generation == lease.generation + 1
        assert await Lifecycle(store, owner="elsewhere", host="i-0ther").claim() is None
        assert [step for step, _ in (await store.get()).steps] == [
            "wake requested", "host up, container starting"]
        running = await container.register_claimed(
            claim, "203.0.113.7:8443", "internal", "-----BEGIN CERTIFICATE-----\n", 600)
        assert running is not None and running.generation == claim.generation + 1
        assert await store.get() == running
        current = await store.get()
        assert (current.status, current.endpoint, current.cert_pem) == (
            Status.RUNNING, "203.0.113.7:8443", "-----BEGIN CERTIFICATE-----\n")

        # Activity renews the idle deadline (never backwards).
        assert running.deadline is not None
        renewed = Deadline(store, 600, "edge")
        assert await renewed.renew(running.generation, running.deadline,
                                   now=time.time() + 120)
        later = await store.get()
        assert later.deadline is not None and later.deadline > running.deadline
        assert instance_state(ec2, instance) == "running"

        # Idle: the container checkpoints and says so, then the host powers off.
        assert await container.mark_stopping(running.generation) is not None
        assert (await store.get()).status == Status.STOPPING
        assert instance_state(ec2, instance) == "running"
        stopped = await container.mark_stopped(running.generation)
        assert stopped is not None and stopped.status == Status.STOPPED
        await compute.stop()
        assert instance_state(ec2, instance) == "stopped"
        final = await store.get()
        assert (final.status, final.endpoint, final.credential) == (Status.STOPPED, None, None)

        # And it wakes again, under a newer generation.
        again = await edge.begin_start()
        assert again is not None and again.generation > running.generation
        await compute.start()
        assert instance_state(ec2, instance) == "running"

    asyncio.run(cycle())


def test_the_reaper_lambda_stops_a_container_past_its_deadline(ec2: Any) -> None:
    create_tables(boto3.client("dynamodb", region_name=REGION))
    instance = create_instance(ec2, state="running")
    deployment = Deployment("s", "unused", STATE_TABLE, instance, "/unused")
    settings = aws_settings(None, deployment)
    store = DynamoDBStateStore(Boto3Api(REGION, None), STATE_TABLE)
    hung = ContainerState(status=Status.RUNNING, generation=3, since=time.time() - 7200,
                          endpoint="203.0.113.7:8443", deadline=time.time() - 3600)
    asyncio.run(store.put_if(0, hung))
    assert reaper_handler({"grace": 60}, None, settings=settings)["reaped"] is True
    assert instance_state(ec2, instance) == "stopped"
    after = asyncio.run(store.get())
    assert after.status == Status.FAILED and after.reason and "reaped" in after.reason
    # Nothing left to do the second time.
    assert reaper_handler({}, None, settings=settings)["reaped"] is False


# -- racing wakes on aiobotocore against a moto server -----------------------------------


def test_concurrent_wakes_start_the_instance_once(moto: MotoServer) -> None:
    create_tables(moto.client("dynamodb"))
    instance = create_instance(moto.client("ec2"))

    async def race() -> tuple[int, int, int]:
        # Six edges (Lambda instances), each with its own clients, eight requests each.
        apis = [CountingApi(AioApi(REGION, moto.url)) for _ in range(6)]
        computes = [EC2Compute(api, instance, poll=0.05) for api in apis]
        lifecycles = [Lifecycle(DynamoDBStateStore(api, STATE_TABLE), owner=f"edge-{n}")
                      for n, api in enumerate(apis)]

        async def request(n: int) -> bool:
            lease = await lifecycles[n % 6].begin_start()
            if lease is not None:
                await computes[n % 6].start()
            return lease is not None

        wins = sum(await asyncio.gather(*(request(n) for n in range(48))))
        starts = sum(api.calls.get("start_instances", 0) for api in apis)
        writes = sum(api.calls.get("put_item", 0) for api in apis)
        for api in apis:
            await api.aclose()
        return wins, starts, writes

    wins, starts, writes = asyncio.run(race())
    assert (wins, starts) == (1, 1)
    assert writes >= 2, "the racers never met at the conditional write"
    assert instance_state(moto.client("ec2"), instance) == "running"
    state = asyncio.run(DynamoDBStateStore(Boto3Api(REGION, moto.url), STATE_TABLE).get())
    assert (state.status, state.generation) == (Status.STARTING, 1)


def test_concurrent_wakers_across_edges_start_once_and_all_see_it_running(
        moto: MotoServer) -> None:
    create_tables(moto.client("dynamodb"))
    instance = create_instance(moto.client("ec2"))

    async def scenario() -> tuple[list[str], int]:
        apis = [CountingApi(AioApi(REGION, moto.url)) for _ in range(4)]
        wakers = [Lifecycle(DynamoDBStateStore(api, STATE_TABLE),
                            EC2Compute(api, instance, poll=0.05), owner=f"edge-{n}",
                            start_timeout=60)
                  for n, api in enumerate(apis)]

        async def boot_container() -> None:
            # The instance boots and the container registers, as on EC2.
            while instance_state(moto.client("ec2"), instance) != "running":
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            container = Lifecycle(DynamoDBStateStore(apis[0], STATE_TABLE), owner="container")
            await container.register_running("203.0.113.7:8443", "internal", None, 600)

        booting = asyncio.ensure_future(boot_container())
        results = await asyncio.gather(*(wakers[n % 4].wake(30) for n in range(20)))
        await booting
        starts = sum(api.calls.get("start_instances", 0) for api in apis)
        for api in apis:
            await api.aclose()
        return [r.status for r in results], starts

    statuses, starts = asyncio.run(scenario())
    assert starts == 1
    assert set(statuses) == {Status.RUNNING}
