"""A fake EC2 instance that walks through EC2's real states on a scaled clock.

moto's instances jump straight to running or stopped. A wake on AWS meets the states
in between (docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instance-state-changes.html:
start → pending → running, stop → stopping → stopped), and how long they last is what
the lifecycle's budgets are about. :class:`ScaledEC2` is the EC2 API the real
:class:`~infra.aws.compute.EC2Compute` talks to (DescribeInstances, StartInstances,
StopInstances) for one instance whose transitions take real EC2 durations times
``scale``; :class:`FakeHost` is what runs on that instance: once it is running and
has booted, the container claims the start and registers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from infra.aws.client import AwsError
from infra.interfaces import StateStore
from infra.lifecycle import Lifecycle

INSTANCE = "i-0123456789abcdef0"
# Real durations, in seconds: a stop that includes the OS shutdown after a sleep (the
# review of the AWS path measured 60-120 s for stop plus boot), EC2 placing a stopped
# instance again, and the OS boot and user data before the container starts.
STOPPING = 100.0
PENDING = 15.0
BOOT = 45.0
CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
         "stopping": 64, "stopped": 80}


class ScaledEC2:
    """One instance's states, advanced lazily from the clock: ``pending`` becomes
    ``running`` after ``pending`` seconds, ``stopping`` becomes ``stopped`` after
    ``stopping`` seconds (both times ``scale``). Like EC2, StartInstances refuses an
    instance that is still stopping, and StopInstances one that is still pending."""

    def __init__(self, scale: float, state: str = "stopped", instance_id: str = INSTANCE,
                 stopping: float = STOPPING, pending: float = PENDING) -> None:
        self.scale = scale
        self.instance_id = instance_id
        self.durations = {"stopping": stopping * scale, "pending": pending * scale}
        self.calls: dict[str, int] = {}
        # Every state the instance entered, with the (monotonic) time it did.
        self.history: list[tuple[str, float]] = [(state, time.monotonic())]

    @property
    def name(self) -> str:
        """The current state, after any transition that is due."""
        state, entered = self.history[-1]
        follows = {"stopping": "stopped", "pending": "running"}
        if state in follows and time.monotonic() >= entered + self.durations[state]:
            self._enter(follows[state], entered + self.durations[state])
        return self.history[-1][0]

    def _enter(self, state: str, at: float | None = None) -> None:
        self.history.append((state, time.monotonic() if at is None else at))

    def states(self) -> list[str]:
        self.name  # noqa: B018 (settle a due transition)
        return [state for state, _ in self.history]

    def poweroff(self) -> None:
        """The OS powered itself off (InstanceInitiatedShutdownBehavior=stop)."""
        if self.name == "running":
            self._enter("stopping")

    def _refuse(self, operation: str, what: str) -> AwsError:
        return AwsError("ec2", operation, "IncorrectInstanceState",
                        f"The instance '{self.instance_id}' is not in a state from which it "
                        f"can be {what}.")

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        assert service == "ec2" and params.get("InstanceIds") == [self.instance_id], params
        self.calls[operation] = self.calls.get(operation, 0) + 1
        current = self.name
        if operation == "start_instances":
            if current == "stopping":
                raise self._refuse(operation, "started")
            if current == "stopped":
                self._enter("pending")
        elif operation == "stop_instances":
            if current == "pending":
                raise self._refuse(operation, "stopped")
            if current == "running":
                self._enter("stopping")
        elif operation != "describe_instances":
            raise AssertionError(f"unexpected EC2 call {operation}")
        state = {"Name": self.name, "Code": CODES[self.name]}
        return {"Reservations": [{"Instances": [{"InstanceId": self.instance_id,
                                                 "State": state}]}]}

    async def warm(self, services: tuple[str, ...]) -> None:
        return None

    async def aclose(self) -> None:
        return None


@dataclass
class FakeHost:
    """What runs on the instance: whenever it has come up, it boots (``boot`` real
    seconds), and the container claims the start asked of this host and registers —
    or, if nothing was asked of it, powers the instance off again."""

    ec2: ScaledEC2
    state: StateStore
    boot: float = BOOT
    registers: bool = True
    boots: int = 0
    refused: int = 0  # boots that found nothing asked of this host
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> FakeHost:
        self._task = asyncio.ensure_future(self._run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        poll = min(0.01, self.ec2.scale)
        while True:
            while self.ec2.name != "running":
                await asyncio.sleep(poll)
            self.boots += 1
            await asyncio.sleep(self.boot * self.ec2.scale)
            container = Lifecycle(self.state, owner="container:fake", host=self.ec2.instance_id)
            claim = await container.claim()
            if claim is None:
                self.refused += 1
                self.ec2.poweroff()
            elif self.registers:
                await container.register_claimed(claim, "203.0.113.7:8443", "internal",
                                                  None, idle_timeout=600)
            while self.ec2.name == "running":
                await asyncio.sleep(poll)
