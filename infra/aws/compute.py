"""Compute as one EC2 instance that is stopped while the workspace sleeps.

The instance boots, asks the state item whether a start was asked of it (the user
data's decision), and runs the container under systemd; the container's "asleep"
exit powers the instance off. ``start`` and ``stop`` are idempotent and cope with
the in-between states: a start while the instance is still stopping waits until it
has stopped, then starts it; a stop while it is pending retries until EC2 accepts it.

How long those in-between states last is :data:`EC2_BUDGET`, which the lifecycle
waits out before it calls a start stale. EC2 documents the states and their order
("When you launch or start an instance, it enters the pending state and then the
running state. When you stop an instance, it enters the stopping state and then the
stopped state": docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instance-state-changes.html)
but no durations; AWS's own waiters for them (``aws ec2 wait instance-stopped`` /
``instance-running``) poll every 15 s and give up after 40 checks, i.e. 600 s
(docs.aws.amazon.com/cli/latest/reference/ec2/wait/instance-stopped.html). Within
that ceiling the budget is what this deployment's own steps take, with room:

- stopping 180 s: the OS shutdown stops the container first, and the container's
  save may take ``TimeoutStopSec=120`` s (deploy/host/ocedge.service) before EC2
  finishes the stop; an idle container has saved already and stops in seconds;
- pending 90 s: EC2 placing the stopped instance again (typically well under a minute);
- boot 150 s: the OS boots, cloud-init runs the user data (its decision, a pull of a
  new image) and systemd starts the container, which then has its own start budget
  (Settings.start_timeout) on top.

Stop, start and boot together are 420 s; with the container's 90 s a start is given
up only after 510 s, inside AWS's 600 s waiter ceiling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from infra.aws.client import AwsApi, AwsError
from infra.interfaces import BackendError, ComputeInfo, HostBudget

log = logging.getLogger("ocedge.compute")

UP = ("pending", "running")
DOWN = ("stopping", "stopped")
GONE = ("shutting-down", "terminated")

EC2_BUDGET = HostBudget(stopping=180.0, pending=90.0, boot=150.0,
                        # A waker sees "stopped" between the end of a stop and the
                        # lease holder's StartInstances (it polls every 2 s).
                        handoff=15.0, describe_every=2.0)


class EC2Compute:
    def __init__(self, api: AwsApi, instance_id: str | None, poll: float = 2.0,
                 budget: HostBudget = EC2_BUDGET) -> None:
        self.api = api
        self._instance_id = instance_id
        self.host = instance_id or ""
        self.budget = budget
        # How often to look again while the instance is between states.
        self.poll = poll

    @property
    def instance_id(self) -> str:
        if not self._instance_id:
            raise BackendError("no EC2 instance is configured: set OCEDGE_INSTANCE_ID or use "
                               "--stack NAME (the stack's InstanceId output)")
        return self._instance_id

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            return await self.api.call("ec2", operation, InstanceIds=[self.instance_id], **params)
        except AwsError as exc:
            if exc.code.startswith("InvalidInstanceID"):
                raise BackendError(
                    f"the EC2 instance {self.instance_id!r} does not exist (from "
                    f"OCEDGE_INSTANCE_ID or the stack's InstanceId output): check --stack "
                    f"and the region ({exc.code})") from None
            raise

    async def state(self) -> tuple[str, str]:
        """The instance's state name and EC2's reason for it (may be empty)."""
        response = await self._call("describe_instances")
        for reservation in response.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                reason = instance.get("StateReason", {}).get("Message", "")
                return str(instance["State"]["Name"]), str(reason)
        raise BackendError(f"EC2 does not describe the instance {self.instance_id!r}")

    async def start(self) -> None:
        """Start the instance; a no-op if it is pending or running. An instance that
        is still stopping is waited for (up to the stopping budget): EC2 starts only
        a stopped instance."""
        give_up = time.monotonic() + self.budget.stopping + self.budget.handoff
        while True:
            name, _ = await self.state()
            if name in UP:
                return
            if name in GONE:
                raise BackendError(f"the EC2 instance {self.instance_id} is {name}; it cannot "
                                   "be started again (redeploy the stack)")
            if name == "stopped":
                try:
                    await self._call("start_instances")
                    log.info("started EC2 instance %s", self.instance_id)
                    return
                except AwsError as exc:
                    # It moved on between our look and our start (another starter): look again.
                    if exc.code != "IncorrectInstanceState":
                        raise
            if time.monotonic() > give_up:
                raise BackendError(f"the EC2 instance {self.instance_id} is still {name} after "
                                   f"{self.budget.stopping + self.budget.handoff:.0f} s; "
                                   f"try again later")
            # Stopping: EC2 cannot start it until it has stopped.
            await asyncio.sleep(self.poll)

    async def stop(self) -> None:
        """Ask the instance to stop (the OS shuts down, the container checkpoints).

        Returns once EC2 accepted the stop; the container records ``stopped`` when done.
        """
        give_up = time.monotonic() + self.budget.pending + self.budget.handoff
        while True:
            name, _ = await self.state()
            if name in DOWN or name in GONE:
                return
            try:
                await self._call("stop_instances")
                log.info("stopping EC2 instance %s", self.instance_id)
                return
            except AwsError as exc:
                # EC2 may refuse to stop an instance that is still pending: wait for it.
                if exc.code != "IncorrectInstanceState":
                    raise
            if time.monotonic() > give_up:
                raise BackendError(f"the EC2 instance {self.instance_id} did not accept a stop "
                                   f"within {self.budget.pending + self.budget.handoff:.0f} s")
            await asyncio.sleep(self.poll)

    async def describe(self) -> ComputeInfo:
        name, reason = await self.state()
        detail = f"EC2 {self.instance_id} {name}" + (f": {reason}" if reason else "")
        # Stopping counts as down: the container on it is going away, and a start
        # asked for now waits for the stop to finish. Pending counts as up.
        return ComputeInfo(running=name in UP, detail=detail, state=name)
