"""The instance role and the edge's role, walked statement by statement
(tests/support/iam.py evaluates them as IAM would).

The instance role is what a container that lost its agent isolation could use, so it
is narrow: it reads only the container's secrets parameter (the sealing key), never
the edge's (the peppers and the cookie key); of the keys table only the provider-key
items, read-only (``dynamodb:LeadingKeys``); of the state table only the state item.
And the container's own calls — recorded against moto — all fit inside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws

from container.agent_secrets import open_agent_secrets
from container.providers import push_provider_keys
from infra.agent_secrets import seal as seal_secret
from infra.aws.client import Boto3Api
from infra.aws.secrets import SsmSecrets
from infra.backends import backends_for_tools
from infra.deadline import Deadline
from infra.interfaces import ContainerState, Status
from infra.lifecycle import Lifecycle
from infra.providers import seal
from infra.secrets import CONTAINER, ContainerSecrets
from tests.support.aws import KEYS_TABLE, REGION, STATE_TABLE, aws_credentials, aws_settings, create_tables
from tests.support.capture import running_capture
from tests.support.deploy import cfn, sam_template
from tests.support.iam import Request, allowed, parameter_arn, role_statements, table_arn

__all__ = ["aws_credentials", "cfn", "sam_template"]  # fixtures

pytestmark = pytest.mark.unit

EDGE_PARAMETER = "/opencode-edge/demo/edge-secrets"
CONTAINER_PARAMETER = "/opencode-edge/demo/container-secrets"
KEYS, STATE = table_arn("KeysTable"), table_arn("StateTable")
ITEM_READS = ("dynamodb:GetItem", "dynamodb:Query")
WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
          "dynamodb:BatchWriteItem")
# Actions that can touch items without naming a partition key in the request, for
# which a LeadingKeys condition (ForAllValues) would hold vacuously.
KEYLESS = ("dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem",
           "dynamodb:PartiQLSelect", "dynamodb:PartiQLUpdate", "dynamodb:ExecuteStatement",
           "dynamodb:ExportTableToPointInTime")


def leading(*keys: str) -> dict[str, list[str]]:
    return {"dynamodb:LeadingKeys": list(keys)}


def kms_for(parameter: str) -> dict[str, list[str]]:
    return {"kms:ViaService": [f"ssm.{REGION}.amazonaws.com"],
            "kms:EncryptionContext:PARAMETER_ARN": [parameter_arn(parameter)]}


@pytest.fixture(scope="module")
def host(sam_template: dict[str, Any]) -> list[dict[str, Any]]:
    return role_statements(sam_template, "HostRole")


@pytest.fixture(scope="module")
def edge(sam_template: dict[str, Any]) -> list[dict[str, Any]]:
    return role_statements(sam_template, "EdgeRole")


def test_the_host_reads_the_containers_secrets_and_never_the_edges(
        host: list[dict[str, Any]]) -> None:
    assert allowed(host, Request("ssm:GetParameter", parameter_arn(CONTAINER_PARAMETER)))
    assert allowed(host, Request("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/k",
                                 kms_for(CONTAINER_PARAMETER)))
    assert not allowed(host, Request("ssm:GetParameter", parameter_arn(EDGE_PARAMETER)))
    assert not allowed(host, Request("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/k",
                                     kms_for(EDGE_PARAMETER)))
    for action in ("ssm:PutParameter", "ssm:GetParametersByPath", "ssm:DeleteParameter"):
        assert not allowed(host, Request(action, parameter_arn(CONTAINER_PARAMETER)))


def test_the_edge_reads_its_own_secrets_and_never_the_sealing_key(
        edge: list[dict[str, Any]]) -> None:
    for action in ("ssm:GetParameter", "ssm:PutParameter"):
        assert allowed(edge, Request(action, parameter_arn(EDGE_PARAMETER)))
        assert not allowed(edge, Request(action, parameter_arn(CONTAINER_PARAMETER)))
    assert not allowed(edge, Request("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/k",
                                     kms_for(CONTAINER_PARAMETER)))


def test_the_host_reads_only_provider_keys_from_the_keys_table(
        host: list[dict[str, Any]]) -> None:
    for action in ITEM_READS:
        assert allowed(host, Request(action, KEYS, leading("provider")))
        for other in (["admin"], ["apikey"], ["login"], ["provider", "admin"]):
            assert not allowed(host, Request(action, KEYS, leading(*other))), (action, other)
    for action in (*WRITES, *KEYLESS):
        assert not allowed(host, Request(action, KEYS, leading("provider"))), action
        assert not allowed(host, Request(action, KEYS)), action


def test_the_host_reads_the_agent_secrets_and_publishes_only_to_its_topic(
        host: list[dict[str, Any]]) -> None:
    for action in ITEM_READS:
        assert allowed(host, Request(action, KEYS, leading("secret")))
        assert not allowed(host, Request(action, KEYS, leading("secret", "admin")))
    for action in WRITES:
        assert not allowed(host, Request(action, KEYS, leading("secret"))), action
    assert allowed(host, Request("sns:Publish", "demo-NotifyTopic"))
    assert not allowed(host, Request("sns:Publish", "arn:aws:sns:us-east-1:123456789012:other"))
    assert not allowed(host, Request("sns:Subscribe", "demo-NotifyTopic"))


def test_the_host_writes_only_its_state_item(host: list[dict[str, Any]]) -> None:
    for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"):
        assert allowed(host, Request(action, STATE, leading("state")))
        assert not allowed(host, Request(action, STATE, leading("somebody-else")))
    for action in ("dynamodb:DeleteItem", *KEYLESS):
        assert not allowed(host, Request(action, STATE, leading("state"))), action
        assert not allowed(host, Request(action, STATE)), action


def test_every_table_statement_of_the_host_is_bound_by_its_leading_keys(
        host: list[dict[str, Any]]) -> None:
    tables = [s for s in host if any(str(a).startswith("dynamodb:")
                                     for a in (s["Action"] if isinstance(s["Action"], list)
                                               else [s["Action"]]))]
    assert tables
    for statement in tables:
        values = statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"]
        assert values in (["provider"], ["secret"], ["state"]), statement
        assert not set(statement["Action"]) & set(KEYLESS), statement


def test_the_evaluator_can_say_yes_and_no() -> None:
    """The walk above can fail: a statement without the condition lets the admin item
    through, and ForAllValues holds for a request that names no key (as in IAM)."""
    loose = [{"Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": KEYS}]
    assert allowed(loose, Request("dynamodb:GetItem", KEYS, leading("admin")))
    bound = [{**loose[0], "Condition": {"ForAllValues:StringEquals": {
        "dynamodb:LeadingKeys": ["provider"]}}}]
    assert not allowed(bound, Request("dynamodb:GetItem", KEYS, leading("admin")))
    assert allowed(bound, Request("dynamodb:GetItem", KEYS))
    denied = [*loose, {"Effect": "Deny", "Action": "dynamodb:*", "Resource": "*"}]
    assert not allowed(denied, Request("dynamodb:GetItem", KEYS, leading("admin")))
    with pytest.raises(AssertionError, match="does not know"):
        allowed([{**loose[0], "Condition": {"NumericLessThan": {"x": "1"}}}],
                Request("dynamodb:GetItem", KEYS))


# -- the container's own calls, recorded -----------------------------------------------


@pytest.fixture
def recorded(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Request]]:
    """moto, with every DynamoDB and SSM call made through Boto3Api from now on
    recorded as the IAM request it is."""
    calls: list[Request] = []
    tables = {KEYS_TABLE: KEYS, STATE_TABLE: STATE}

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.endpoint_prefix
        if service == "ssm":
            calls.append(Request(f"ssm:{model.name}", parameter_arn(params["Name"])))
        elif service == "dynamodb":
            key = params.get("Key") or params.get("Item")
            if key is not None:
                keys = [key["pk"]["S"]]
            elif model.name == "Query":
                assert params["KeyConditionExpression"].startswith("pk = :pk")
                keys = [params["ExpressionAttributeValues"][":pk"]["S"]]
            else:
                keys = []
            calls.append(Request(f"dynamodb:{model.name}", tables[params["TableName"]],
                                 leading(*keys)))

    original = Boto3Api._new_client

    def new_client(self: Boto3Api, service: str) -> Any:
        client = original(self, service)
        client.meta.events.register("before-parameter-build", record)
        return client

    with mock_aws():
        create_tables(boto3.client("dynamodb", region_name=REGION))
        monkeypatch.setattr(Boto3Api, "_new_client", new_client)
        yield calls


def test_every_call_the_container_makes_is_one_the_host_role_allows(
        recorded: list[Request], host: list[dict[str, Any]]) -> None:
    instance = "i-0123456789abcdef0"
    # As container.env has it: the container's parameter only, this instance's id.
    settings = aws_settings(None, keys_table=KEYS_TABLE, state_table=STATE_TABLE,
                            instance_id=instance, container_secrets_parameter=CONTAINER_PARAMETER)
    # What `ocedge init`, `ocedge provider set` and a wake did before (you, the edge).
    admin = Boto3Api(REGION, None)
    sealing = ContainerSecrets.generate()
    SsmSecrets(admin, None, CONTAINER_PARAMETER).create(CONTAINER, sealing.to_json())
    backends = backends_for_tools(settings)
    asyncio.run(backends.keys.put_provider("openai", seal(sealing.sealing_key, "openai", "sk-1"),
                                           time.time()))
    asyncio.run(backends.keys.put_secret("GH_TOKEN", seal_secret(
        sealing.sealing_key, "GH_TOKEN", "ghp_1"), time.time()))
    asyncio.run(backends.state.put_if(0, ContainerState(status=Status.STARTING, generation=1,
                                                        host=instance, since=time.time())))
    recorded.clear()

    # The container's life, through the same code it runs (container/main.py, watcher).
    async def life() -> None:
        container = backends_for_tools(settings)
        lifecycle = Lifecycle(container.state, owner="container-test", host=instance)
        claim = await lifecycle.claim()
        assert claim is not None
        with running_capture() as opencode:
            pushed = await push_provider_keys(settings, container, f"http://127.0.0.1:"
                                              f"{opencode.port}", httpx.BasicAuth("o", "p"))
        assert pushed == ["openai"]
        assert await open_agent_secrets(container) == {"GH_TOKEN": "ghp_1"}
        running = await lifecycle.register_claimed(claim, "203.0.113.7:8443", "credential",
                                                   "CERT", 600)
        assert running is not None
        await lifecycle.update(running.generation, (Status.RUNNING,), busy=True)
        await Deadline(container.state, 600, "container-test").renew(
            running.generation, time.time() - 500)
        await lifecycle.mark_stopping(running.generation)
        await lifecycle.mark_stopped(running.generation)

    asyncio.run(life())
    kinds = {call.action for call in recorded}
    assert {"ssm:GetParameter", "dynamodb:Query", "dynamodb:GetItem",
            "dynamodb:PutItem"} <= kinds, kinds
    refused = [call for call in recorded if not allowed(host, call)]
    assert not refused, f"the host role would refuse the container's calls: {refused}"
