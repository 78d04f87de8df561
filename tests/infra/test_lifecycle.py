"""The container lifecycle on in-memory stores: one start for many callers, failed and
stale starts, lost races, generations that never go back, a container that is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from infra.interfaces import ContainerState, Status
from infra.lifecycle import EXIT_ASLEEP, Lifecycle
from infra.reaper import reap
from tests.support.memory import MemoryCompute, MemoryStateStore

pytestmark = pytest.mark.unit


def _edge(state: MemoryStateStore, compute: MemoryCompute, owner: str = "edge",
          start_timeout: float = 60.0) -> Lifecycle:
    return Lifecycle(state, compute, owner=owner, start_timeout=start_timeout, poll=0.001)


def _never_backwards(state: MemoryStateStore) -> None:
    generations = state.generations()
    assert generations == sorted(generations), generations


# -- wake ------------------------------------------------------------------------------


def test_fifty_concurrent_wakes_start_the_host_once_and_all_see_it_running() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state, boot=0.01)
    lifecycle = _edge(state, compute)

    async def wake_all() -> list[ContainerState]:
        return await asyncio.gather(*(lifecycle.wake(5) for _ in range(50)))

    results = asyncio.run(wake_all())
    assert compute.starts == 1
    assert {r.status for r in results} == {Status.RUNNING}
    assert len({r.generation for r in results}) == 1
    _never_backwards(state)


def test_wakes_in_several_processes_share_one_start_through_the_lease() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state, boot=0.01)
    # Several edges (Lambda instances): each its own Lifecycle, one store and host.
    edges = [_edge(state, compute, owner=f"edge-{n}") for n in range(5)]

    async def wake_all() -> list[ContainerState]:
        return await asyncio.gather(*(edges[n % 5].wake(5) for n in range(50)))

    results = asyncio.run(wake_all())
    assert compute.starts == 1
    assert {r.status for r in results} == {Status.RUNNING}
    assert state.refused >= 1, "the racers never met at the conditional write"
    leases = [w for w in state.writes if w.state.status == Status.STARTING]
    assert len(leases) == 1
    _never_backwards(state)


def test_a_wake_of_a_running_container_writes_nothing() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state)
    asyncio.run(_edge(state, compute).wake(5))
    writes = len(state.writes)
    assert asyncio.run(_edge(state, compute).wake(5)).status == Status.RUNNING
    assert (compute.starts, len(state.writes)) == (1, writes)


def test_a_start_that_fails_is_marked_failed_with_its_reason_and_the_next_wake_retries() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state, start_error=RuntimeError("no capacity"))
    lifecycle = _edge(state, compute)

    failed = asyncio.run(lifecycle.wake(5))
    assert failed.status == Status.FAILED
    assert failed.reason == "could not start: no capacity"
    assert failed == asyncio.run(state.get())
    assert compute.starts == 1

    compute.start_error = None
    assert asyncio.run(lifecycle.wake(5)).status == Status.RUNNING
    assert compute.starts == 2
    _never_backwards(state)


def test_a_wake_returns_the_latest_state_when_the_wait_runs_out() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state, registers=False)
    lifecycle = _edge(state, compute)

    async def wake_briefly() -> ContainerState:
        current = await lifecycle.wake(0.05)
        lifecycle.cancel()
        return current

    current = asyncio.run(wake_briefly())
    assert (current.status, current.lease_owner) == (Status.STARTING, "edge")
    assert compute.starts == 1


def test_a_stale_start_is_recovered_by_the_next_wake() -> None:
    # Another edge took the lease long ago and its host never came up.
    stale = ContainerState(status=Status.STARTING, generation=4, since=time.time() - 3600,
                           lease_owner="edge-that-died")
    state = MemoryStateStore(stale)
    compute = MemoryCompute(state)

    current = asyncio.run(_edge(state, compute, start_timeout=60).wake(5))
    assert current.status == Status.RUNNING
    assert current.generation > stale.generation
    assert compute.starts == 1
    statuses = [w.state.status for w in state.writes]
    assert statuses[:2] == [Status.FAILED, Status.STARTING]
    assert state.writes[0].state.reason == "start timed out"
    _never_backwards(state)


def test_a_start_still_within_its_timeout_is_waited_for_not_recovered() -> None:
    starting = ContainerState(status=Status.STARTING, generation=2, since=time.time(),
                              lease_owner="another edge")
    state = MemoryStateStore(starting)
    compute = MemoryCompute(state)

    async def other_edge_boots() -> ContainerState:
        waiting = asyncio.ensure_future(_edge(state, compute).wake(5))
        await asyncio.sleep(0.02)
        await Lifecycle(state, owner="container").register_running("h:1", "c", None, 600)
        return await waiting

    assert asyncio.run(other_edge_boots()).status == Status.RUNNING
    assert compute.starts == 0, "a start in progress was started again"


def test_our_start_that_goes_stale_is_reported_failed_not_retried_forever() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state, registers=False)
    lifecycle = _edge(state, compute, start_timeout=0.02)

    async def host_dies_silently() -> ContainerState:
        waking = asyncio.ensure_future(lifecycle.wake(5))
        while compute.starts == 0:
            await asyncio.sleep(0.001)
        compute.crash()
        return await waking

    failed = asyncio.run(host_dies_silently())
    assert (failed.status, failed.reason) == (Status.FAILED, "start timed out")
    assert compute.starts == 1


def test_a_start_that_ends_without_running_is_reported_to_its_waiters() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state, registers=False)
    lifecycle = _edge(state, compute)

    async def container_fails_to_boot() -> ContainerState:
        waking = asyncio.ensure_future(lifecycle.wake(5))
        while (lease := await state.get()).status != Status.STARTING:
            await asyncio.sleep(0.001)
        # The container's own start-up failed and it said so.
        await Lifecycle(state, owner="container").mark_failed_if(lease, "no workspace")
        return await waking

    failed = asyncio.run(container_fails_to_boot())
    assert (failed.status, failed.reason) == (Status.FAILED, "no workspace")
    assert compute.starts == 1


def test_cancel_stops_waiting_but_not_the_start() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state, boot=0.05)
    lifecycle = _edge(state, compute)

    async def cancel_midway() -> ContainerState:
        waiter = asyncio.ensure_future(lifecycle.wake(5))
        while compute.starts == 0:
            await asyncio.sleep(0.001)
        lifecycle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.1)
        return await state.get()

    assert asyncio.run(cancel_midway()).status == Status.RUNNING


# -- transitions -----------------------------------------------------------------------


def test_a_lost_lease_race_re_reads_and_takes_none() -> None:
    state = MemoryStateStore()
    first, second = Lifecycle(state, owner="a"), Lifecycle(state, owner="b")
    seen = asyncio.run(state.get())
    assert asyncio.run(first.take_lease(seen)) is not None
    assert asyncio.run(second.take_lease(seen)) is None  # read before a's write
    assert asyncio.run(second.begin_start()) is None  # re-read: starting, not asleep
    assert asyncio.run(state.get()).lease_owner == "a"


def test_register_running_retries_a_lost_race_under_a_newer_generation() -> None:
    state = MemoryStateStore()

    async def race() -> list[ContainerState]:
        return await asyncio.gather(*(
            Lifecycle(state, owner=f"c{n}").register_running(f"h:{n}", "c", None, 600)
            for n in range(5)))

    registered = asyncio.run(race())
    assert sorted(r.generation for r in registered) == [1, 2, 3, 4, 5]
    assert asyncio.run(state.get()).generation == 5
    _never_backwards(state)


def test_a_generation_never_moves_backwards() -> None:
    state = MemoryStateStore(ContainerState(status=Status.RUNNING, generation=7))
    lifecycle = Lifecycle(state, owner="x")
    current = asyncio.run(state.get())
    # A writer holding an older read cannot write it back over the newer item.
    older = dataclasses.replace(current, generation=6)
    assert asyncio.run(lifecycle.mark_failed_if(older, "old")) is None
    assert asyncio.run(lifecycle.take_lease(older)) is None
    assert asyncio.run(state.get()) == current
    # Every transition from here on moves it forward.
    asyncio.run(lifecycle.mark_failed_if(current, "crashed"))
    asyncio.run(lifecycle.begin_start())
    asyncio.run(lifecycle.register_running("h:1", "c", None, 600))
    assert [w.state.generation for w in state.writes] == [7, 8, 9]


def test_an_older_generation_cannot_write_over_a_newer_one() -> None:
    state = MemoryStateStore()
    old = asyncio.run(Lifecycle(state, owner="old").register_running("h:1", "a", None, 600))
    new = asyncio.run(Lifecycle(state, owner="new").register_running("h:2", "b", None, 600))
    lifecycle = Lifecycle(state, owner="old")
    assert asyncio.run(lifecycle.update(old.generation, busy=True)) is None
    assert asyncio.run(lifecycle.mark_stopping(old.generation)) is None
    assert asyncio.run(lifecycle.mark_stopped(old.generation, "exiting")) is None
    assert asyncio.run(state.get()) == new


def test_update_honours_the_expected_status() -> None:
    state = MemoryStateStore()
    running = asyncio.run(Lifecycle(state, owner="c").register_running("h:1", "a", None, 600))
    lifecycle = Lifecycle(state, owner="c")
    assert asyncio.run(lifecycle.mark_stopping(running.generation)) is not None
    assert asyncio.run(lifecycle.update(running.generation, (Status.RUNNING,), busy=True)) is None
    assert asyncio.run(state.get()).busy is False


def test_a_clean_stop_clears_the_link_and_a_reason_makes_it_failed() -> None:
    state = MemoryStateStore()
    running = asyncio.run(Lifecycle(state, owner="c").register_running("h:1", "a", "pem", 600))
    stopped = asyncio.run(Lifecycle(state, owner="c").mark_stopped(running.generation))
    assert stopped is not None
    assert (stopped.status, stopped.endpoint, stopped.credential, stopped.cert_pem,
            stopped.lease_owner) == (Status.STOPPED, None, None, None, None)
    again = asyncio.run(Lifecycle(state, owner="c").register_running("h:1", "a", None, 600))
    failed = asyncio.run(Lifecycle(state, owner="c").mark_stopped(again.generation, "oom"))
    assert failed is not None and (failed.status, failed.reason) == (Status.FAILED, "oom")


def test_a_lifecycle_without_compute_cannot_wake() -> None:
    state = MemoryStateStore()
    with pytest.raises(RuntimeError, match="without a compute"):
        asyncio.run(Lifecycle(state, owner="container").wake(1))
    assert state.writes == []


# -- a container that is gone ----------------------------------------------------------


def test_a_container_whose_host_exited_is_marked_failed_with_its_exit_code() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state)
    lifecycle = _edge(state, compute)
    running = asyncio.run(lifecycle.wake(5))
    compute.crash(exit_code=137)
    failed = asyncio.run(lifecycle.container_gone(running))
    assert failed is not None
    assert (failed.status, failed.reason) == (Status.FAILED,
                                              "the container exited with status 137")
    # The next wake starts a new one.
    assert asyncio.run(lifecycle.wake(5)).generation > running.generation


def test_a_clean_exit_says_so_and_a_running_host_is_left_alone() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state)
    lifecycle = _edge(state, compute)
    running = asyncio.run(lifecycle.wake(5))
    assert asyncio.run(lifecycle.container_gone(running)) is None
    assert asyncio.run(state.get()) == running
    compute.crash(exit_code=0)
    failed = asyncio.run(lifecycle.container_gone(running))
    assert failed is not None and failed.reason == "the container exited"


def test_a_container_that_went_to_sleep_is_no_crash() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state)
    lifecycle = _edge(state, compute)
    running = asyncio.run(lifecycle.wake(5))
    compute.crash(exit_code=EXIT_ASLEEP)  # its own "asleep" status, before it said so
    failed = asyncio.run(lifecycle.container_gone(running))
    assert failed is not None and failed.reason == "the container exited"


def test_container_gone_does_not_touch_a_newer_generation() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state)
    lifecycle = _edge(state, compute)
    seen = asyncio.run(lifecycle.wake(5))
    newer = asyncio.run(Lifecycle(state, owner="c").register_running("h:2", "b", None, 600))
    compute.crash()
    assert asyncio.run(lifecycle.container_gone(seen)) is None
    assert asyncio.run(state.get()) == newer


# -- sleep and the reaper --------------------------------------------------------------


def test_request_sleep_stops_a_running_host_and_leaves_a_sleeping_one() -> None:
    state = MemoryStateStore()
    compute = MemoryCompute(state)
    lifecycle = _edge(state, compute)
    asyncio.run(lifecycle.wake(5))
    assert asyncio.run(lifecycle.request_sleep()).status == Status.RUNNING
    assert (compute.stops, asyncio.run(state.get()).status) == (1, Status.STOPPED)
    assert asyncio.run(lifecycle.request_sleep()).status == Status.STOPPED
    assert compute.stops == 1


def test_the_reaper_stops_a_container_past_deadline_and_grace_only() -> None:
    now = time.time()
    state = MemoryStateStore()
    compute = MemoryCompute(state)
    lifecycle = _edge(state, compute)
    running = asyncio.run(lifecycle.wake(5))
    assert running.deadline is not None
    assert not asyncio.run(reap(lifecycle, grace=60, now=running.deadline + 30)).reaped
    busy = asyncio.run(lifecycle.update(running.generation, busy=True))
    assert busy is not None
    assert not asyncio.run(reap(lifecycle, grace=60, now=running.deadline + 120)).reaped
    asyncio.run(lifecycle.update(running.generation, busy=False))
    result = asyncio.run(reap(lifecycle, grace=60, now=running.deadline + 120))
    assert result.reaped and result.status == Status.RUNNING
    after = asyncio.run(state.get())
    assert after.status in (Status.STOPPED, Status.FAILED)
    assert compute.stops == 1 and not compute.running
    assert now < running.deadline


def test_the_reaper_clears_a_stuck_start() -> None:
    stuck = ContainerState(status=Status.STARTING, generation=3, since=time.time() - 3600)
    state = MemoryStateStore(stuck)
    compute = MemoryCompute(state, running=True)
    lifecycle = _edge(state, compute, start_timeout=600)
    result = asyncio.run(reap(lifecycle))
    assert result.reaped and result.detail.startswith("reaped: stuck starting")
    after = asyncio.run(state.get())
    assert (after.status, after.generation) == (Status.FAILED, 3)
    assert compute.stops == 1
