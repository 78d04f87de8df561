"""Wake progress: the steps of a start, written into the state item by whoever performs
them (conditional on the start's generation, in every state store), and shown the same
way by ``ocedge wake``, ``ocedge status`` and the edge's status answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from infra.aws.client import Boto3Api
from infra.aws.state import DynamoDBStateStore
from infra.interfaces import ContainerState, StateStore, Status
from infra.lifecycle import STEP_CONTAINER, STEP_REQUESTED, Lifecycle
from infra.local.db import Database
from infra.local.state import LocalStateStore
from infra.progress import CURRENT, DONE, FAILED, STEP_OPENCODE, STEP_READY, STEP_WORKSPACE, lines, report
from tests.infra.test_cli_lifecycle import compute, ocedge, state
from tests.support.aws import REGION, STATE_TABLE, aws_credentials, create_tables
from tests.support.memory import MemoryCompute, MemoryStateStore

pytestmark = pytest.mark.unit
__all__ = ["aws_credentials", "compute", "state"]  # fixtures


@pytest.fixture(params=["memory", "local", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStateStore()
    elif request.param == "local":
        yield LocalStateStore(Database(tmp_path / "ocedge.db"))
    else:
        request.getfixturevalue("aws_credentials")
        with mock_aws():
            create_tables(boto3.client("dynamodb", region_name=REGION))
            yield DynamoDBStateStore(Boto3Api(REGION, None), STATE_TABLE)


def test_each_step_is_kept_in_order_and_a_stale_start_cannot_add_one(store: StateStore) -> None:
    async def scenario() -> None:
        waker = Lifecycle(store, owner="edge")
        old = await waker.begin_start()
        assert old is not None
        # That start failed; a newer one began meanwhile.
        await waker.mark_failed_if(await store.get(), "the old container died")
        new = await waker.begin_start()
        assert new is not None and new.generation > old.generation
        container = Lifecycle(store, owner="container")
        assert await container.record_step(new.generation, STEP_WORKSPACE) is not None
        # The container of the old start is still around: its step goes nowhere.
        assert await container.record_step(old.generation, STEP_OPENCODE) is None
        assert await container.record_step(new.generation, STEP_OPENCODE) is not None
        current = await store.get()
        assert [step for step, _ in current.steps] == [STEP_REQUESTED, STEP_WORKSPACE,
                                                       STEP_OPENCODE]
        times = [at for _, at in current.steps]
        assert times == sorted(times)
        # Once running, nothing is added to the start any more.
        await container.register_running("127.0.0.1:1", "pw", None, 60)
        assert await container.record_step(new.generation + 1, STEP_OPENCODE) is None
        shown = report(await store.get(), time.time())
        assert [(step.name, step.state) for step in shown] == [
            (STEP_REQUESTED, DONE), (STEP_WORKSPACE, DONE), (STEP_OPENCODE, DONE),
            (STEP_READY, DONE)]

    asyncio.run(scenario())


def test_the_current_step_counts_up_and_the_failing_one_carries_the_reason() -> None:
    starting = ContainerState(status=Status.STARTING, generation=3, since=100.0,
                              steps=((STEP_REQUESTED, 100.0), (STEP_CONTAINER, 102.0),
                                     (STEP_WORKSPACE, 103.5)))
    shown = report(starting, now=110.0)
    assert [(s.name, s.seconds, s.state) for s in shown] == [
        (STEP_REQUESTED, 2.0, DONE), (STEP_CONTAINER, 1.5, DONE), (STEP_WORKSPACE, 6.5, CURRENT)]

    failed = ContainerState(status=Status.FAILED, generation=3, since=105.0,
                            reason="the workspace could not be opened: no such bucket",
                            steps=starting.steps)
    shown = report(failed, now=200.0)
    assert (shown[-1].name, shown[-1].seconds, shown[-1].state) == (STEP_WORKSPACE, 1.5, FAILED)
    assert lines(failed, 200.0)[-1].endswith(
        f"{STEP_WORKSPACE} — FAILED: the workspace could not be opened: no such bucket")
    # Asleep: the steps belong to a start long over, and are not shown.
    assert report(ContainerState(status=Status.STOPPED, steps=starting.steps), 200.0) == []


def test_wake_and_status_show_the_steps(state: MemoryStateStore, compute: MemoryCompute,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    state.item = ContainerState(status=Status.STARTING, generation=2, since=now - 5,
                                lease_owner="edge:other:1",
                                steps=((STEP_REQUESTED, now - 5), (STEP_WORKSPACE, now - 2)))
    compute.running = True
    assert ocedge(tmp_path, "wake", "--timeout", "0.3") == 2
    _, err = capsys.readouterr()
    assert f"· {STEP_REQUESTED}" in err and f"· {STEP_WORKSPACE}" in err, err
    assert err.index(STEP_REQUESTED) < err.index(STEP_WORKSPACE)

    state.item = ContainerState(status=Status.FAILED, generation=2, since=now,
                                reason="opencode did not answer", steps=state.item.steps)
    assert ocedge(tmp_path, "status") == 0
    out, _ = capsys.readouterr()
    assert "steps of the start:" in out
    assert f"{STEP_WORKSPACE} — FAILED: opencode did not answer" in out, out
