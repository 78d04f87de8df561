"""KeyStore on DynamoDB: the admin, API keys (hashed) and provider credentials (sealed).

Item layout: see :mod:`infra.aws`. Reads are strongly consistent so that a revoked
key stops working within the edge's cache time, not the cache time plus
replication lag.
"""

from __future__ import annotations

from typing import Any

from infra.agent_secrets import AgentSecret
from infra.aws.client import AwsError, ConditionFailed
from infra.aws.items import DynamoTable, decode_item, encode, encode_item, number
from infra.interfaces import AdminUser, ApiKeyRecord, Failures, ProviderCredential

ADMIN = "admin"
APIKEY = "apikey"
PROVIDER = "provider"
AGENT_SECRET = "secret"  # noqa: S105 - the partition key, not a password
LOGIN = "login"
FAILURES = "failures"
# Attribute the table's Time to Live deletes expired failure counters by (epoch
# seconds). TTL deletes "typically within two days" and expired items still show in
# reads (docs.aws.amazon.com/amazondynamodb/latest/developerguide/howitworks-ttl.html),
# so a counter's own ``since`` decides whether it still counts; TTL only tidies up.
TTL_ATTRIBUTE = "ttl"


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

    async def rehash_key(self, key_id: str, expected: bytes, new: bytes) -> bool:
        return await self._swap(APIKEY, key_id, "secret_hash", expected, new)

    async def _swap(self, pk: str, sk: str, attribute: str, expected: bytes,
                    new: bytes) -> bool:
        """Set one binary attribute of an item if it still holds ``expected``."""
        try:
            await self._call(
                "update_item", Key=_key(pk, sk), UpdateExpression="SET #a = :new",
                ConditionExpression="#a = :expected",
                ExpressionAttributeNames={"#a": attribute},
                ExpressionAttributeValues={":new": encode(new), ":expected": encode(expected)})
        except ConditionFailed:
            return False
        return True

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

    async def reseal_provider(self, provider: str, expected: bytes, sealed: bytes) -> bool:
        return await self._swap(PROVIDER, provider, "sealed", expected, sealed)

    async def remove_provider(self, provider: str) -> bool:
        try:
            await self._call("delete_item", Key=_key(PROVIDER, provider),
                             ConditionExpression="attribute_exists(pk)")
        except ConditionFailed:
            return False
        return True

    # -- agent secrets: pk "secret", sk = the name (infra/agent_secrets.py) --------------

    async def put_secret(self, name: str, sealed: bytes, when: float) -> None:
        await self._call(
            "update_item", Key=_key(AGENT_SECRET, name),
            UpdateExpression="SET #s = :sealed, #u = :when, #c = if_not_exists(#c, :when)",
            ExpressionAttributeNames={"#s": "sealed", "#u": "updated", "#c": "created"},
            ExpressionAttributeValues={":sealed": encode(sealed), ":when": encode(when)})

    async def list_secrets(self) -> list[AgentSecret]:
        return [AgentSecret(str(v["sk"]), bytes(v["sealed"]), float(v["created"]),
                            float(v["updated"])) for v in await self._query(AGENT_SECRET)]

    async def remove_secret(self, name: str) -> bool:
        try:
            await self._call("delete_item", Key=_key(AGENT_SECRET, name),
                             ConditionExpression="attribute_exists(pk)")
        except ConditionFailed:
            return False
        return True

    async def reseal_secret(self, name: str, expected: bytes, sealed: bytes) -> bool:
        return await self._swap(AGENT_SECRET, name, "sealed", expected, sealed)

    # -- browser sessions and 2FA: one item --------------------------------------------
    # Counters and conditions are single UpdateItem calls, atomic in DynamoDB (ADD, and
    # SET with a ConditionExpression: docs.aws.amazon.com/amazondynamodb/latest/
    # developerguide/example_dynamodb_Scenario_AtomicCounterOperations_section.html).

    async def session_epoch(self) -> int:
        values = await self._get(LOGIN, LOGIN)
        return int(values.get("epoch", 0)) if values else 0

    async def end_sessions(self) -> int:
        response = await self._call(
            "update_item", Key=_key(LOGIN, LOGIN), UpdateExpression="ADD #e :one",
            ExpressionAttributeNames={"#e": "epoch"},
            ExpressionAttributeValues={":one": encode(1)}, ReturnValues="UPDATED_NEW")
        return int(decode_item(response["Attributes"])["epoch"])

    async def get_totp(self) -> bytes | None:
        values = await self._get(LOGIN, LOGIN)
        sealed = values.get("totp_sealed") if values else None
        return bytes(sealed) if sealed is not None else None

    async def set_totp(self, sealed: bytes | None) -> None:
        names = {"#t": "totp_sealed", "#s": "totp_step"}
        if sealed is None:
            await self._call("update_item", Key=_key(LOGIN, LOGIN),
                             UpdateExpression="REMOVE #t SET #s = :zero",
                             ExpressionAttributeNames=names,
                             ExpressionAttributeValues={":zero": encode(0)})
            return
        await self._call("update_item", Key=_key(LOGIN, LOGIN),
                         UpdateExpression="SET #t = :sealed, #s = :zero",
                         ExpressionAttributeNames=names,
                         ExpressionAttributeValues={":sealed": encode(sealed),
                                                    ":zero": encode(0)})

    async def use_totp_step(self, step: int) -> bool:
        try:
            await self._call(
                "update_item", Key=_key(LOGIN, LOGIN), UpdateExpression="SET #s = :step",
                ConditionExpression="attribute_not_exists(#s) OR #s < :step",
                ExpressionAttributeNames={"#s": "totp_step"},
                ExpressionAttributeValues={":step": encode(step)})
        except ConditionFailed:
            return False
        return True

    # -- failed logins: one item per client address, and "global" ---------------------

    async def count_failure(self, name: str, now: float, window: float) -> Failures:
        names = {"#c": "count", "#s": "since"}
        for _ in range(5):
            try:
                # The usual case: one more in the current window.
                response = await self._call(
                    "update_item", Key=_key(FAILURES, name), UpdateExpression="ADD #c :one",
                    ConditionExpression="#s > :cutoff", ExpressionAttributeNames=names,
                    ExpressionAttributeValues={":one": encode(1), ":cutoff": encode(now - window)},
                    ReturnValues="ALL_NEW")
                return _failures(decode_item(response["Attributes"]))
            except ConditionFailed:
                pass
            try:
                # No counter, or its window passed: the first of a new window.
                response = await self._call(
                    "update_item", Key=_key(FAILURES, name),
                    UpdateExpression="SET #c = :one, #s = :now, #t = :ttl",
                    ConditionExpression="attribute_not_exists(#s) OR #s <= :cutoff",
                    ExpressionAttributeNames={**names, "#t": TTL_ATTRIBUTE},
                    ExpressionAttributeValues={":one": encode(1), ":now": encode(now),
                                               ":cutoff": encode(now - window),
                                               ":ttl": encode(int(now + window) + 60)},
                    ReturnValues="ALL_NEW")
                return _failures(decode_item(response["Attributes"]))
            except ConditionFailed:
                continue  # another edge started the window meanwhile: count in it
        raise AwsError("dynamodb", "UpdateItem", "TooMuchContention",
                       "could not count a failed login: the counter kept changing")

    async def forgive_failure(self, name: str, since: float) -> None:
        try:
            await self._call(
                "update_item", Key=_key(FAILURES, name), UpdateExpression="ADD #c :less",
                # Only the window it was counted in, never below zero, never a new counter.
                ConditionExpression="#s = :since AND #c > :zero",
                ExpressionAttributeNames={"#c": "count", "#s": "since"},
                ExpressionAttributeValues={":less": encode(-1), ":since": encode(since),
                                           ":zero": encode(0)})
        except ConditionFailed:
            pass

    async def get_failures(self, name: str) -> Failures | None:
        values = await self._get(FAILURES, name)
        return _failures(values) if values else None

    async def clear_failures(self, name: str) -> None:
        try:
            await self._call(
                "update_item", Key=_key(FAILURES, name), UpdateExpression="SET #c = :zero",
                # Never create a counter just to clear it.
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#c": "count"},
                ExpressionAttributeValues={":zero": encode(0)})
        except ConditionFailed:
            pass


def _failures(values: dict[str, Any]) -> Failures:
    return Failures(int(values.get("count", 0)), float(values.get("since", 0.0)))
