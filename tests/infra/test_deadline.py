"""The idle deadline: renewed by the 5% rule, never moved backwards."""

from __future__ import annotations

import asyncio

import pytest

from infra.deadline import Deadline
from infra.interfaces import ContainerState, Status
from tests.support.memory import MemoryStateStore

pytestmark = pytest.mark.unit

TIMEOUT = 600.0  # 5% of it: 30 s


def _running(deadline: float = 1000.0, generation: int = 3) -> MemoryStateStore:
    return MemoryStateStore(ContainerState(status=Status.RUNNING, generation=generation,
                                           deadline=deadline))


def test_a_renewal_is_due_only_once_it_moves_the_deadline_by_five_percent() -> None:
    deadline = Deadline(_running(), TIMEOUT, "edge")
    # now + 600 against a known deadline of 1000: due from now = 430 on.
    assert deadline.due(3, 1000.0, now=429.0) is None
    assert deadline.due(3, 1000.0, now=430.0) == 1030.0
    assert deadline.due(3, None, now=0.0) == TIMEOUT


def test_renewals_write_at_most_once_per_five_percent() -> None:
    store = _running()
    deadline = Deadline(store, TIMEOUT, "edge")

    async def active_minute() -> int:
        # One request a second for a minute, the known deadline never refreshed.
        return sum([await deadline.renew(3, 1000.0, now=430.0 + t) for t in range(60)])

    assert asyncio.run(active_minute()) == 2  # at 430 and at 460
    assert [w.kind for w in store.writes] == ["deadline", "deadline"]
    assert store.item.deadline == 1060.0


def test_the_deadline_never_moves_backwards() -> None:
    store = _running(deadline=5000.0)
    deadline = Deadline(store, TIMEOUT, "edge")
    # Another writer already set a later deadline: this one's earlier target is refused.
    assert deadline.due(3, 1000.0, now=430.0) == 1030.0
    assert asyncio.run(deadline.renew(3, 1000.0, now=430.0)) is False
    assert store.item.deadline == 5000.0
    assert store.writes == []


def test_a_refused_renewal_is_not_retried_on_every_request() -> None:
    store = _running(deadline=5000.0)
    deadline = Deadline(store, TIMEOUT, "edge")
    asyncio.run(deadline.renew(3, 1000.0, now=430.0))
    refused = store.refused
    asyncio.run(deadline.renew(3, 1000.0, now=431.0))
    assert store.refused == refused, "a refused renewal was tried again at once"


def test_only_the_running_container_of_that_generation_is_renewed() -> None:
    store = _running(generation=3)
    deadline = Deadline(store, TIMEOUT, "edge")
    assert asyncio.run(deadline.renew(2, 1000.0, now=500.0)) is False
    store.item = ContainerState(status=Status.STOPPING, generation=3, deadline=1000.0)
    assert asyncio.run(deadline.renew(3, 1000.0, now=500.0)) is False
    assert store.writes == []


def test_a_new_generation_starts_from_its_own_deadline() -> None:
    store = _running(generation=3)
    deadline = Deadline(store, TIMEOUT, "container")
    assert asyncio.run(deadline.renew(3, 1000.0, now=500.0)) is True
    # The next generation registers with an earlier deadline: the memory of the
    # previous generation's write must not hold its renewals back.
    store.item = ContainerState(status=Status.RUNNING, generation=4, deadline=700.0)
    assert asyncio.run(deadline.renew(4, 700.0, now=500.0)) is True
    assert store.item.deadline == 1100.0
    assert store.writes[-1].writer == "container"


def test_renewing_soon_writes_in_the_background_only_when_due_and_logs_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    store = _running()
    deadline = Deadline(store, TIMEOUT, "edge")

    class Down(MemoryStateStore):
        async def extend_deadline(self, generation: int, deadline: float, now: float,
                                  writer: str) -> bool:
            raise ConnectionError("the table does not answer")

    async def scenario() -> None:
        deadline.renew_soon(3, 1000.0, now=429.0)  # not due: nothing starts
        deadline.renew_soon(3, 1000.0, now=430.0)
        assert not store.writes  # in the background, not in the caller's time
        await asyncio.sleep(0.01)
        assert [w.state.deadline for w in store.writes] == [1030.0]
        failing = Deadline(Down(), TIMEOUT, "edge")
        failing.renew_soon(3, 1000.0, now=430.0)  # raises nothing here...
        await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert "could not renew the idle deadline" in caplog.text  # ...and is logged
