"""DynamoDB attribute values to and from Python, for the few types the stores use.

Written here rather than borrowed from boto3's TypeSerializer so the edge, which
talks to DynamoDB through aiobotocore, never imports boto3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.aws.client import AwsApi, AwsError, ConditionFailed
from infra.interfaces import BackendError

AttributeValue = dict[str, Any]
Item = dict[str, AttributeValue]


def encode(value: object) -> AttributeValue:
    # bool before int: True is an int too.
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": repr(value) if isinstance(value, float) else str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes | bytearray):
        return {"B": bytes(value)}
    if isinstance(value, list | tuple):
        return {"L": [encode(v) for v in value]}
    raise TypeError(f"cannot store a {type(value).__name__} in DynamoDB")


def decode(value: AttributeValue) -> Any:
    if "S" in value:
        return value["S"]
    if "N" in value:
        text = str(value["N"])
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if "B" in value:
        return bytes(value["B"])
    if "BOOL" in value:
        return bool(value["BOOL"])
    if "NULL" in value:
        return None
    if "L" in value:
        return [decode(v) for v in value["L"]]
    raise ValueError(f"unexpected DynamoDB attribute {sorted(value)}")


def encode_item(values: Mapping[str, object]) -> Item:
    """An item from ``values``; None values are left out (DynamoDB has no 'unset' value)."""
    return {name: encode(value) for name, value in values.items() if value is not None}


def decode_item(item: Mapping[str, AttributeValue]) -> dict[str, Any]:
    return {name: decode(value) for name, value in item.items()}


def number(value: Any) -> float | None:
    return None if value is None else float(value)


def missing_table(exc: AwsError, table: str, setting: str, output: str) -> BackendError:
    """The error for a table that does not exist: name it and say where it comes from."""
    return BackendError(
        f"the DynamoDB table {table!r} does not exist (from {setting} or the stack's "
        f"{output} output): check --stack / OCEDGE_STACK and the region, and that the "
        f"stack deployed ({exc.code})")


def is_missing_table(exc: AwsError) -> bool:
    return exc.code == "ResourceNotFoundException"


class DynamoTable:
    """One DynamoDB table: every call names it, and a missing table becomes a clear
    error that says which setting or stack output to check."""

    setting = ""  # the OCEDGE_* variable that names the table
    output = ""  # the stack output that names it

    def __init__(self, api: AwsApi, table: str) -> None:
        self.api = api
        self.table = table

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.api.call("dynamodb", operation,
                                                         TableName=self.table, **params)
            return result
        except ConditionFailed:
            raise
        except AwsError as exc:
            if is_missing_table(exc):
                raise missing_table(exc, self.table, self.setting, self.output) from None
            raise
