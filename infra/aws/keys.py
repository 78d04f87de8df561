"""KeyStore on DynamoDB: the admin, API keys (hashed) and provider credentials (sealed).

Item layout: see :mod:`infra.aws`. Reads are strongly consistent so that a revoked
key stops working within the edge's cache time, not the cache time plus
replication lag.
"""

from __future__ import annotations

from typing import Any

from infra.aws.client import ConditionFailed
from infra.aws.items import DynamoTable, decode_item, encode, encode_item, number
from infra.interfaces import AdminUser, ApiKeyRecord, ProviderCredential

ADMIN = "admin"
APIKEY = "apikey"
PROVIDER = "provider"


def _key(pk: str, sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _record(values: dict[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=str(values["sk"]), name=str(values.get("name", "")),
        secret_hash=bytes(values["secret_hash"]), created=float(values["created"]),
        expires=number(values.get("expires")), revoked=number(values.get("revoked")),
        last_used=number(values.get("last_used")))


def _provider(values: dict[str, Any]) -> ProviderCredential:
    return ProviderCredential(provider=str(values["sk"]), sealed=bytes(values["sealed"]),
                              created=float(values["created"]),
                              updated=float(values["updated"]))


class DynamoDBKeyStore(DynamoTable):
    setting = "OCEDGE_KEYS_TABLE"
    output = "KeysTable"

    async def _get(self, pk: str, sk: str) -> dict[str, Any] | None:
        response = await self._call("get_item", Key=_key(pk, sk), ConsistentRead=True)
        item = response.get("Item")
        return decode_item(item) if item else None

    async def _query(self, pk: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        while True:
            response = await self._call("query", **params)
            items.extend(decode_item(item) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return items
            params["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    # -- admin -----------------------------------------------------------------------

    async def get_admin(self) -> AdminUser | None:
        values = await self._get(ADMIN, ADMIN)
        if values is None:
            return None
        return AdminUser(str(values["username"]), bytes(values["password_hash"]))

    async def set_admin(self, user: AdminUser) -> None:
        await self._call("put_item", Item=encode_item({
            "pk": ADMIN, "sk": ADMIN, "username": user.username,
            "password_hash": user.password_hash}))

    # -- API keys --------------------------------------------------------------------

    async def put_key(self, record: ApiKeyRecord) -> None:
        try:
            await self._call("put_item", Item=encode_item({
                "pk": APIKEY, "sk": record.id, "name": record.name,
                "secret_hash": record.secret_hash, "created": record.created,
                "expires": record.expires, "revoked": record.revoked,
                "last_used": record.last_used}),
                ConditionExpression="attribute_not_exists(pk)")
        except ConditionFailed:
            raise ValueError(f"an API key with id {record.id} exists") from None

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        values = await self._get(APIKEY, key_id)
        return _record(values) if values else None

    async def list_keys(self) -> list[ApiKeyRecord]:
        records = [_record(values) for values in await self._query(APIKEY)]
        return sorted(records, key=lambda r: r.created)

    async def revoke_key(self, key_id: str, when: float) -> bool:
        try:
            await self._call(
                "update_item", Key=_key(APIKEY, key_id),
                # The first revocation time stays: revoking twice changes nothing.
                UpdateExpression="SET #r = if_not_exists(#r, :when)",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#r": "revoked"},
                ExpressionAttributeValues={":when": encode(when)})
        except ConditionFailed:
            return False
        return True

    async def touch_key(self, key_id: str, when: float) -> None:
        try:
            await self._call(
                "update_item", Key=_key(APIKEY, key_id), UpdateExpression="SET #u = :when",
                # Never create a bare item for a key that was deleted meanwhile.
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#u": "last_used"},
                ExpressionAttributeValues={":when": encode(when)})
        except ConditionFailed:
            pass

    # -- provider credentials ------------------------------------------------------

    async def put_provider(self, provider: str, sealed: bytes, when: float) -> None:
        await self._call(
            "update_item", Key=_key(PROVIDER, provider),
            UpdateExpression="SET #s = :sealed, #u = :when, #c = if_not_exists(#c, :when)",
            ExpressionAttributeNames={"#s": "sealed", "#u": "updated", "#c": "created"},
            ExpressionAttributeValues={":sealed": encode(sealed), ":when": encode(when)})

    async def get_provider(self, provider: str) -> ProviderCredential | None:
        values = await self._get(PROVIDER, provider)
        return _provider(values) if values else None

    async def list_providers(self) -> list[ProviderCredential]:
        return [_provider(values) for values in await self._query(PROVIDER)]

    async def remove_provider(self, provider: str) -> bool:
        try:
            await self._call("delete_item", Key=_key(PROVIDER, provider),
                             ConditionExpression="attribute_exists(pk)")
        except ConditionFailed:
            return False
        return True
