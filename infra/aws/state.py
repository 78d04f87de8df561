"""StateStore on DynamoDB: the deployment's one state item, conditional writes only.

Every transition is a PutItem conditioned on the generation (and status) the
writer read, so of many racing writers exactly one wins and a container of an
older generation can never overwrite a newer one. Deadline renewal is an
UpdateItem that only raises the deadline of the running generation.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from infra.aws.client import ConditionFailed
from infra.aws.items import DynamoTable, decode_item, encode, encode_item, number
from infra.interfaces import ContainerState, Status

_KEY = {"pk": {"S": "state"}}
_OPTIONAL_TEXT = ("endpoint", "credential", "cert_pem", "lease_owner", "reason", "host")


def _load(values: dict[str, Any]) -> ContainerState:
    return ContainerState(
        status=Status(values.get("status", Status.STOPPED)),
        generation=int(values.get("generation", 0)),
        since=float(values.get("since", 0.0)),
        deadline=number(values.get("deadline")),
        last_activity=number(values.get("last_activity")),
        busy=bool(values.get("busy", False)),
        # A list of [step, time] lists in the item.
        steps=tuple((str(step), float(at)) for step, at in values.get("steps", ())),
        **{name: (str(values[name]) if name in values else None) for name in _OPTIONAL_TEXT},
    )


class DynamoDBStateStore(DynamoTable):
    setting = "OCEDGE_STATE_TABLE"
    output = "StateTable"

    async def get(self) -> ContainerState:
        # Strongly consistent: a waiter polling for "running" sees it at once, and a
        # writer's expected generation is as fresh as it can be.
        response = await self._call("get_item", Key=_KEY, ConsistentRead=True)
        item = response.get("Item")
        return _load(decode_item(item)) if item else ContainerState()

    async def put_if(self, expected_generation: int, new: ContainerState,
                     expected_status: tuple[Status, ...] | None = None) -> bool:
        values: dict[str, Any] = {"#g": "generation"}
        params: dict[str, Any] = {":g": encode(expected_generation)}
        condition = "#g = :g"
        if expected_status is not None:
            if not expected_status:
                return False
            values["#s"] = "status"
            names = [f":s{i}" for i in range(len(expected_status))]
            params.update({name: encode(status) for name, status in zip(names, expected_status,
                                                                          strict=True)})
            condition += f" AND #s IN ({', '.join(names)})"
        # No item yet reads as stopped, generation 0 (ContainerState()).
        if expected_generation == 0 and (expected_status is None or Status.STOPPED in expected_status):
            condition = f"attribute_not_exists(pk) OR ({condition})"
        item = encode_item({"pk": "state", **dataclasses.asdict(new),
                            "writer": new.lease_owner or "-", "written": time.time()})
        try:
            await self._call("put_item", Item=item, ConditionExpression=condition,
                             ExpressionAttributeNames=values, ExpressionAttributeValues=params)
        except ConditionFailed:
            return False
        return True

    async def extend_deadline(self, generation: int, deadline: float, now: float,
                              writer: str) -> bool:
        try:
            await self._call(
                "update_item", Key=_KEY,
                UpdateExpression="SET #d = :d, #a = :now, #w = :writer, #t = :now",
                # Only the running container of this generation, and only upwards.
                ConditionExpression=("#g = :g AND #s = :running AND "
                                     "(attribute_not_exists(#d) OR #d < :d)"),
                ExpressionAttributeNames={"#d": "deadline", "#a": "last_activity",
                                          "#w": "writer", "#t": "written", "#g": "generation",
                                          "#s": "status"},
                ExpressionAttributeValues={":d": encode(deadline), ":now": encode(now),
                                           ":writer": encode(writer),
                                           ":g": encode(generation), ":running": encode(str(Status.RUNNING))})
        except ConditionFailed:
            return False
        return True
