"""Compute as one EC2 instance that is stopped while the workspace sleeps.

The instance boots the container under systemd; the container exiting 0 powers
the instance off. ``start`` and ``stop`` are idempotent and cope with the
in-between states: a start while the instance is still stopping waits until it
has stopped, then starts it; a stop while it is pending retries until EC2
accepts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from infra.aws.client import AwsApi, AwsError
from infra.interfaces import BackendError, ComputeInfo

log = logging.getLogger("ocedge.compute")

UP = ("pending", "running")
DOWN = ("stopping", "stopped")
GONE = ("shutting-down", "terminated")


class EC2Compute:
    def __init__(self, api: AwsApi, instance_id: str | None, poll: float = 2.0,
                 wait_timeout: float = 300.0) -> None:
        self.api = api
        self._instance_id = instance_id
        # How often to look again while the instance is between states, and for
        # how long at most (a stop with the container checkpointing takes a while).
        self.poll = poll
        self.wait_timeout = wait_timeout

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
        """Start the instance; a no-op if it is pending or running."""
        give_up = time.monotonic() + self.wait_timeout
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
                                   f"{self.wait_timeout:.0f} s; try again later")
            # Stopping: EC2 cannot start it until it has stopped.
            await asyncio.sleep(self.poll)

    async def stop(self) -> None:
        """Ask the instance to stop (the OS shuts down, the container checkpoints).

        Returns once EC2 accepted the stop; the container records ``stopped`` when done.
        """
        give_up = time.monotonic() + self.wait_timeout
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
                                   f"within {self.wait_timeout:.0f} s")
            await asyncio.sleep(self.poll)

    async def describe(self) -> ComputeInfo:
        name, reason = await self.state()
        detail = f"EC2 {self.instance_id} {name}" + (f": {reason}" if reason else "")
        # Stopping counts as down: the container on it is going away, and a start
        # asked for now waits for the stop to finish.
        return ComputeInfo(running=name in UP, detail=detail)
