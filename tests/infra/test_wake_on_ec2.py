"""Waking follows real EC2: the real EC2Compute and Lifecycle against an instance that
walks through pending/running/stopping/stopped with real durations on a scaled clock
(tests/support/ec2.py), and the fences that keep a host nobody asked from running a
second container."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from infra.aws.compute import EC2_BUDGET, EC2Compute
from infra.interfaces import ContainerState, Status
from infra.lifecycle import (
    STEP_CONTAINER,
    STEP_HOST_STARTING,
    STEP_HOST_STOPPING,
    STEP_REQUESTED,
    Lifecycle,
)
from infra.reaper import reap
from tests.support.ec2 import INSTANCE, FakeHost, ScaledEC2
from tests.support.memory import MemoryCompute, MemoryStateStore

pytestmark = pytest.mark.unit

SCALE = 0.01  # 100 real seconds pass in one
FAST = 0.002  # for tests that wait out a whole budget (510 s)
START_TIMEOUT = 90.0  # the container's own start budget (Settings.start_timeout)


def _edge(state: MemoryStateStore, ec2: ScaledEC2, owner: str = "edge") -> Lifecycle:
    """An edge (one Lambda instance): its own EC2 client, the deployment's store; every
    duration on the instance's clock."""
    scale = ec2.scale
    compute = EC2Compute(ec2, ec2.instance_id, poll=2.0 * scale,  # type: ignore[arg-type]
                         budget=EC2_BUDGET.scaled(scale))
    return Lifecycle(state, compute, owner=owner, start_timeout=START_TIMEOUT * scale,
                     poll=min(0.005, scale))


def _asleep_on(host: str = INSTANCE, generation: int = 5) -> ContainerState:
    """The item a container leaves when it has gone to sleep on ``host``."""
    return ContainerState(status=Status.STOPPED, generation=generation,
                          since=time.time(), host=host)


def test_a_wake_right_after_a_sleep_waits_out_stopping_and_nobody_calls_it_failed() -> None:
    # The container just went to sleep: the instance is still shutting down (100 s).
    state = MemoryStateStore(_asleep_on())
    ec2 = ScaledEC2(SCALE, state="stopping")

    async def scenario() -> list[ContainerState]:
        host = FakeHost(ec2, state).start()
        try:
            # Two edge instances wake it at once, and keep asking, as browsers do.
            edges = [_edge(state, ec2, "edge-1"), _edge(state, ec2, "edge-2")]
            return await asyncio.gather(*(edges[n % 2].wake(30) for n in range(6)))
        finally:
            host.stop()

    started = time.monotonic()
    results = asyncio.run(scenario())
    took = (time.monotonic() - started) / SCALE
    assert {r.status for r in results} == {Status.RUNNING}
    assert ec2.states() == ["stopping", "stopped", "pending", "running"]
    assert ec2.calls["start_instances"] == 1
    # Stop (100 s) + pending (15 s) + boot (45 s): well past the old 90 s limit, and
    # nobody marked the start failed on the way.
    assert took > 150
    assert not [w for w in state.writes if w.state.status == Status.FAILED]
    final = asyncio.run(state.get())
    assert final.host == INSTANCE
    steps = [step for step, _ in final.steps]
    assert steps == [STEP_REQUESTED, STEP_HOST_STOPPING, STEP_HOST_STARTING, STEP_CONTAINER]
    times = [at for _, at in final.steps]
    assert times == sorted(times)


def test_a_start_whose_container_never_comes_up_is_given_up_after_its_budget_only() -> None:
    state = MemoryStateStore(_asleep_on())
    ec2 = ScaledEC2(FAST, state="stopped")
    edge = _edge(state, ec2)
    limit = edge.start_limit / FAST
    assert START_TIMEOUT + EC2_BUDGET.total == 510
    assert limit == pytest.approx(510)

    async def scenario() -> ContainerState:
        host = FakeHost(ec2, state, registers=False).start()
        try:
            return await edge.wake(30)
        finally:
            host.stop()

    started = time.monotonic()
    failed = asyncio.run(scenario())
    took = (time.monotonic() - started) / FAST
    assert failed.status == Status.FAILED
    assert failed.reason is not None and "did not come up within" in failed.reason
    assert limit <= took < limit + 60
    assert ec2.calls["start_instances"] == 1


def test_a_host_stuck_stopping_makes_the_start_fail_with_that_reason() -> None:
    state = MemoryStateStore(_asleep_on())
    ec2 = ScaledEC2(FAST, state="stopping", stopping=10_000)
    failed = asyncio.run(_edge(state, ec2).wake(30))
    assert failed.status == Status.FAILED
    assert failed.reason is not None and "still stopping" in failed.reason
    assert "start_instances" not in ec2.calls


def test_a_host_that_boots_when_nobody_asked_powers_off_again() -> None:
    # CloudFormation started the instance (a stack update), or a start was asked of
    # the instance the stack replaced: the host finds no start for itself.
    for item in (_asleep_on(), ContainerState(status=Status.STARTING, generation=6,
                                               since=time.time(), host="i-0ld")):
        state = MemoryStateStore(item)
        ec2 = ScaledEC2(FAST, state="pending")

        async def boot(ec2: ScaledEC2 = ec2, state: MemoryStateStore = state) -> FakeHost:
            host = FakeHost(ec2, state).start()
            while ec2.name != "stopped":
                await asyncio.sleep(0.01)
            host.stop()
            return host

        host = asyncio.run(boot())
        assert (host.boots, host.refused) == (1, 1)
        assert ec2.states() == ["pending", "running", "stopping", "stopped"]
        assert asyncio.run(state.get()) == item  # nothing written


# -- the container's claim -------------------------------------------------------------


def test_the_container_claims_only_a_start_asked_of_its_own_host() -> None:
    state = MemoryStateStore(_asleep_on())
    edge = Lifecycle(state, MemoryCompute(state, host=INSTANCE), owner="edge")
    lease = asyncio.run(edge.begin_start())
    assert lease is not None and lease.host == INSTANCE

    elsewhere = Lifecycle(state, owner="container:other", host="i-0ther")
    assert asyncio.run(elsewhere.claim()) is None
    here = Lifecycle(state, owner="container:here", host=INSTANCE)
    claim = asyncio.run(here.claim())
    assert claim is not None and claim.generation == lease.generation + 1
    assert (claim.status, claim.lease_owner, claim.since) == (Status.STARTING,
                                                              "container:here", lease.since)
    # The lease's generation is fenced: a writer that still holds it loses.
    assert asyncio.run(edge.mark_failed_if(lease, "late")) is None
    running = asyncio.run(here.register_claimed(claim, "203.0.113.7:8443", "c", "pem", 600))
    assert running is not None and running.status == Status.RUNNING
    assert running.generation == claim.generation + 1 and running.host == INSTANCE


def test_a_claim_that_was_overtaken_never_registers() -> None:
    state = MemoryStateStore(ContainerState(status=Status.STARTING, generation=3,
                                            since=time.time(), host=INSTANCE))
    here = Lifecycle(state, owner="container:slow", host=INSTANCE)
    claim = asyncio.run(here.claim())
    assert claim is not None
    # Meanwhile its start was given up and a new one asked of another instance.
    asyncio.run(Lifecycle(state, owner="edge").mark_failed_if(claim, "start timed out"))
    other = Lifecycle(state, MemoryCompute(state, host="i-0ther"), owner="edge")
    assert asyncio.run(other.begin_start()) is not None
    assert asyncio.run(here.register_claimed(claim, "h:1", "c", None, 600)) is None
    assert asyncio.run(state.get()).host == "i-0ther"


def test_a_restarted_container_takes_over_from_its_own_host_but_not_after_a_clean_sleep() -> None:
    for status in (Status.FAILED, Status.RUNNING, Status.STOPPING):
        state = MemoryStateStore(ContainerState(status=status, generation=8, host=INSTANCE,
                                                endpoint="h:1"))
        claim = asyncio.run(Lifecycle(state, owner="container", host=INSTANCE).claim())
        assert claim is not None and claim.status == Status.STARTING, status
        assert claim.endpoint is None
    state = MemoryStateStore(_asleep_on())
    assert asyncio.run(Lifecycle(state, owner="container", host=INSTANCE).claim()) is None
    # A host without identity (a local child process) has nothing to claim.
    assert asyncio.run(Lifecycle(state, owner="container").claim()) is None


# -- nobody acts on a container it cannot see -------------------------------------------


def test_a_container_on_a_replaced_instance_is_never_declared_gone_or_stopped_from_here() -> None:
    old = ContainerState(status=Status.RUNNING, generation=4, since=time.time() - 7200,
                         endpoint="198.51.100.1:8443", host="i-0ld", deadline=time.time() - 3600)
    state = MemoryStateStore(old)
    compute = MemoryCompute(state, host=INSTANCE)  # the stack's new instance: stopped
    lifecycle = Lifecycle(state, compute, owner="edge")
    assert asyncio.run(lifecycle.container_gone(old)) is None
    # The reaper records it failed only well past its deadline, and never stops this
    # deployment's own (other) instance for it.
    assert not asyncio.run(reap(lifecycle, grace=60, now=old.deadline + 120)).reaped  # type: ignore[operator]
    later = old.deadline + 60 + lifecycle.start_limit + 1  # type: ignore[operator]
    result = asyncio.run(reap(lifecycle, grace=60, now=later))
    assert result.reaped and compute.stops == 0
    assert asyncio.run(state.get()).status == Status.FAILED


def test_a_start_asked_of_another_instance_is_recovered_only_after_twice_its_budget() -> None:
    stale = ContainerState(status=Status.STARTING, generation=6, host="i-0ld",
                           since=time.time() - 2 * 600 + 30)
    state = MemoryStateStore(stale)
    compute = MemoryCompute(state, host=INSTANCE)
    lifecycle = Lifecycle(state, compute, owner="edge", start_timeout=600, poll=0.001)

    async def briefly() -> ContainerState:
        current = await lifecycle.wake(0.05)
        lifecycle.cancel()
        return current

    assert asyncio.run(briefly()).status == Status.STARTING
    assert compute.starts == 0
    state.item = dataclasses.replace(stale, since=time.time() - 2 * 600 - 1)
    woke = asyncio.run(lifecycle.wake(5))
    assert woke.status == Status.RUNNING and compute.starts == 1
    assert state.writes[0].state.reason == "start timed out: the start asked of i-0ld never came up"
