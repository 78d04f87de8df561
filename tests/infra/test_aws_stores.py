"""The DynamoDB key and state stores, the SSM secrets and the stack lookup, on moto.

Store semantics run in-process (``mock_aws``, boto3); what the edge does on its
request path — revocation through the auth cache — runs on aiobotocore against a
moto server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from edge.auth import Authenticator, Presented
from edge.session import SessionSigner
from edge.throttle import FailureThrottle
from infra.aws.client import AioApi, Boto3Api
from infra.aws.keys import DynamoDBKeyStore
from infra.aws.secrets import SsmSecrets
from infra.aws.stack import resolve
from infra.aws.state import DynamoDBStateStore
from infra.backends import backends_for_tools
from infra.credentials import mint_api_key
from infra.interfaces import AdminUser, BackendError, ContainerState, Status
from infra.lifecycle import Lifecycle
from infra.secrets import ContainerSecrets, EdgeSecrets, ServerSecrets
from tests.support.aws import (
    CONTAINER_SECRETS_PARAMETER,
    KEYS_TABLE,
    REGION,
    SECRETS_PARAMETER,
    STATE_TABLE,
    WEB_URL,
    MotoServer,
    aws_credentials,
    aws_settings,
    create_stack,
    create_tables,
    moto,
    moto_server,
)

__all__ = ["aws_credentials", "moto", "moto_server"]  # fixtures


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[Boto3Api]:
    """In-process moto with the deployment's tables; the API the CLI would use."""
    with mock_aws():
        create_tables(boto3.client("dynamodb", region_name=REGION))
        yield Boto3Api(REGION, None)


# -- key store -------------------------------------------------------------------------


def test_admin_is_absent_until_set_then_round_trips(aws: Boto3Api) -> None:
    keys = DynamoDBKeyStore(aws, KEYS_TABLE)
    assert asyncio.run(keys.get_admin()) is None
    asyncio.run(keys.set_admin(AdminUser("admin", b"$argon2id$hash")))
    assert asyncio.run(keys.get_admin()) == AdminUser("admin", b"$argon2id$hash")
    asyncio.run(keys.set_admin(AdminUser("root", b"$argon2id$other")))
    assert asyncio.run(keys.get_admin()) == AdminUser("root", b"$argon2id$other")


def test_api_keys_are_stored_by_id_listed_and_never_duplicated(aws: Boto3Api) -> None:
    keys = DynamoDBKeyStore(aws, KEYS_TABLE)
    first = mint_api_key("laptop", b"p" * 32, expires=2e9, now=100.0).record
    second = mint_api_key("ci", b"p" * 32, now=200.0).record
    asyncio.run(keys.put_key(second))
    asyncio.run(keys.put_key(first))
    assert asyncio.run(keys.get_key(first.id)) == first
    assert asyncio.run(keys.get_key("nosuchkey000")) is None
    assert [r.id for r in asyncio.run(keys.list_keys())] == [first.id, second.id]
    with pytest.raises(ValueError, match="exists"):
        asyncio.run(keys.put_key(dataclasses.replace(first, name="again")))
    assert asyncio.run(keys.get_key(first.id)) == first


def test_revoking_keeps_the_first_time_and_unknown_keys_are_not_created(aws: Boto3Api) -> None:
    keys = DynamoDBKeyStore(aws, KEYS_TABLE)
    record = mint_api_key("laptop", b"p" * 32, now=100.0).record
    asyncio.run(keys.put_key(record))
    assert asyncio.run(keys.revoke_key(record.id, 500.0)) is True
    assert asyncio.run(keys.revoke_key(record.id, 900.0)) is True
    assert asyncio.run(keys.get_key(record.id)).revoked == 500.0  # type: ignore[union-attr]
    assert asyncio.run(keys.revoke_key("nosuchkey000", 500.0)) is False
    asyncio.run(keys.touch_key("nosuchkey000", 600.0))
    asyncio.run(keys.touch_key(record.id, 600.0))
    assert asyncio.run(keys.get_key("nosuchkey000")) is None
    assert asyncio.run(keys.get_key(record.id)).last_used == 600.0  # type: ignore[union-attr]


def test_provider_credentials_keep_their_created_time(aws: Boto3Api) -> None:
    keys = DynamoDBKeyStore(aws, KEYS_TABLE)
    asyncio.run(keys.put_provider("openai", b"sealed-1", 100.0))
    asyncio.run(keys.put_provider("anthropic", b"sealed-2", 150.0))
    asyncio.run(keys.put_provider("openai", b"sealed-3", 200.0))
    openai = asyncio.run(keys.get_provider("openai"))
    assert openai is not None
    assert (openai.sealed, openai.created, openai.updated) == (b"sealed-3", 100.0, 200.0)
    assert [p.provider for p in asyncio.run(keys.list_providers())] == ["anthropic", "openai"]
    assert asyncio.run(keys.remove_provider("openai")) is True
    assert asyncio.run(keys.remove_provider("openai")) is False
    assert asyncio.run(keys.get_provider("openai")) is None
    # Kinds do not mix: API keys are not providers and the other way round.
    assert asyncio.run(keys.list_keys()) == []


def test_a_missing_table_names_itself_and_what_to_check(aws: Boto3Api) -> None:
    keys = DynamoDBKeyStore(aws, "no-such-keys-table")
    with pytest.raises(BackendError, match="'no-such-keys-table' does not exist") as caught:
        asyncio.run(keys.get_admin())
    assert "OCEDGE_KEYS_TABLE" in str(caught.value) and "--stack" in str(caught.value)
    state = DynamoDBStateStore(aws, "no-such-state-table")
    with pytest.raises(BackendError, match="StateTable"):
        asyncio.run(state.get())


# -- state store -----------------------------------------------------------------------


def test_an_empty_state_table_reads_as_stopped_generation_zero(aws: Boto3Api) -> None:
    state = DynamoDBStateStore(aws, STATE_TABLE)
    assert asyncio.run(state.get()) == ContainerState()


def test_every_field_of_the_state_item_round_trips(aws: Boto3Api) -> None:
    state = DynamoDBStateStore(aws, STATE_TABLE)
    full = ContainerState(status=Status.RUNNING, generation=1, since=1.5, endpoint="10.0.0.1:8443",
                          credential="internal", cert_pem="-----BEGIN CERTIFICATE-----\n",
                          deadline=99.25, last_activity=42.0, lease_owner="edge:1",
                          reason=None, busy=True)
    assert asyncio.run(state.put_if(0, full)) is True
    assert asyncio.run(state.get()) == full
    cleared = dataclasses.replace(full, status=Status.STOPPED, generation=2, endpoint=None,
                                  credential=None, cert_pem=None, busy=False, reason="why")
    assert asyncio.run(state.put_if(1, cleared)) is True
    read = asyncio.run(state.get())
    assert read == cleared
    assert type(read.status) is Status  # read back as the enum, not a bare string


def test_put_if_needs_the_expected_generation_and_status(aws: Boto3Api) -> None:
    state = DynamoDBStateStore(aws, STATE_TABLE)
    starting = ContainerState(status=Status.STARTING, generation=1, lease_owner="a")
    # No item yet: it is stopped at generation 0, so "expected running" fails.
    assert asyncio.run(state.put_if(0, starting, (Status.RUNNING,))) is False
    assert asyncio.run(state.put_if(0, starting, (Status.STOPPED,))) is True
    assert asyncio.run(state.put_if(0, starting, (Status.STOPPED,))) is False  # generation moved on
    running = dataclasses.replace(starting, status=Status.RUNNING, generation=2)
    assert asyncio.run(state.put_if(1, running, (Status.STOPPED,))) is False  # status differs
    assert asyncio.run(state.put_if(1, running, (Status.STARTING, Status.STOPPED))) is True
    assert asyncio.run(state.get()) == running


def test_the_deadline_only_moves_up_and_only_for_the_running_generation(aws: Boto3Api) -> None:
    state = DynamoDBStateStore(aws, STATE_TABLE)
    assert asyncio.run(state.extend_deadline(0, 500.0, 1.0, "edge")) is False  # not running
    asyncio.run(state.put_if(0, ContainerState(status=Status.RUNNING, generation=1, deadline=100.0)))
    assert asyncio.run(state.extend_deadline(1, 200.0, 2.0, "edge")) is True
    assert asyncio.run(state.extend_deadline(1, 150.0, 3.0, "container")) is False
    assert asyncio.run(state.extend_deadline(1, 200.0, 3.0, "container")) is False
    assert asyncio.run(state.extend_deadline(0, 900.0, 3.0, "stale")) is False
    current = asyncio.run(state.get())
    assert (current.deadline, current.last_activity) == (200.0, 2.0)
    asyncio.run(state.put_if(1, dataclasses.replace(current, status=Status.STOPPING)))
    assert asyncio.run(state.extend_deadline(1, 900.0, 4.0, "edge")) is False


def test_a_stale_generation_is_rejected_and_never_overwrites_the_newer(aws: Boto3Api) -> None:
    store = DynamoDBStateStore(aws, STATE_TABLE)
    lifecycle = Lifecycle(store, owner="old")
    old = asyncio.run(lifecycle.register_running("10.0.0.1:8443", "old", None, 600))
    new = asyncio.run(Lifecycle(store, owner="new").register_running(
        "10.0.0.2:8443", "new", None, 600))
    assert new.generation > old.generation
    assert asyncio.run(lifecycle.update(old.generation, busy=True)) is None
    assert asyncio.run(store.extend_deadline(old.generation, 1e12, 1.0, "old")) is False
    assert asyncio.run(lifecycle.mark_stopping(old.generation)) is None
    assert asyncio.run(lifecycle.mark_stopped(old.generation, "old container exiting")) is None
    assert asyncio.run(store.put_if(old.generation, dataclasses.replace(old, generation=99))) \
        is False
    assert asyncio.run(store.get()) == new
    # The newer generation still moves freely.
    assert asyncio.run(lifecycle.mark_stopping(new.generation)) is not None


# -- secrets -----------------------------------------------------------------------------


def _ssm(aws: Boto3Api) -> SsmSecrets:
    return SsmSecrets(aws, SECRETS_PARAMETER, CONTAINER_SECRETS_PARAMETER)


def test_secrets_are_two_secure_strings_created_once_and_then_kept(aws: Boto3Api) -> None:
    first, second = ServerSecrets(_ssm(aws)), ServerSecrets(_ssm(Boto3Api(REGION, None)))
    assert first.edge(create=False) is None and first.container(create=False) is None
    assert first.ensure() is True
    assert second.ensure() is False
    assert first.edge() == second.edge() and first.container() == second.container()
    ssm = boto3.client("ssm", region_name=REGION)
    edge = ssm.get_parameter(Name=SECRETS_PARAMETER, WithDecryption=True)["Parameter"]
    container = ssm.get_parameter(Name=CONTAINER_SECRETS_PARAMETER,
                                  WithDecryption=True)["Parameter"]
    assert edge["Type"] == container["Type"] == "SecureString"
    # Split by who needs them: the edge's holds no sealing key, the container's no pepper.
    edge_secrets = EdgeSecrets.from_json(edge["Value"], SECRETS_PARAMETER)
    sealing = ContainerSecrets.from_json(container["Value"], CONTAINER_SECRETS_PARAMETER)
    assert "sealing" not in edge["Value"] and sealing.sealing_key.hex() not in edge["Value"]
    assert "pepper" not in container["Value"] and "session" not in container["Value"]
    assert edge_secrets == first.edge() and sealing == first.container()
    assert len({edge_secrets.session_secret, edge_secrets.peppers[0], sealing.sealing_key}) == 3
    for value in (edge_secrets.session_secret, edge_secrets.peppers[0], sealing.sealing_key):
        assert value.hex() not in repr(edge_secrets) + repr(sealing)


def test_racing_creators_end_up_with_one_set_of_secrets(aws: Boto3Api) -> None:
    sources = [ServerSecrets(_ssm(Boto3Api(REGION, None))) for _ in range(6)]

    async def race() -> list[EdgeSecrets | None]:
        return list(await asyncio.gather(*(asyncio.to_thread(s.edge, True) for s in sources)))

    found = asyncio.run(race())
    assert found[0] is not None and all(f == found[0] for f in found)


def test_a_foreign_secrets_parameter_is_refused_clearly(aws: Boto3Api) -> None:
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=SECRETS_PARAMETER, Value="hunter2", Type="SecureString")
    with pytest.raises(BackendError, match="does not hold the edge's opencode-edge secrets") \
            as caught:
        ServerSecrets(_ssm(aws)).edge(create=False)
    assert "hunter2" not in str(caught.value)


def test_a_missing_parameter_name_says_which_setting_to_give(aws: Boto3Api) -> None:
    with pytest.raises(BackendError, match="OCEDGE_CONTAINER_SECRETS_PARAMETER"):
        ServerSecrets(SsmSecrets(aws, SECRETS_PARAMETER, None)).container(create=False)


# -- stack and backends ------------------------------------------------------------------


def test_the_stack_outputs_name_every_resource(aws: Boto3Api) -> None:
    # The fixture's tables exist already; the stack makes its own under other names.
    boto3.client("dynamodb", region_name=REGION).delete_table(TableName=KEYS_TABLE)
    boto3.client("dynamodb", region_name=REGION).delete_table(TableName=STATE_TABLE)
    deployment = create_stack(boto3.client("cloudformation", region_name=REGION),
                              boto3.client("ec2", region_name=REGION))
    settings = aws_settings(None, stack=deployment.stack, backend="local")
    resolved = resolve(settings)
    assert (resolved.backend, resolved.workspace) == ("aws", "s3")
    assert (resolved.keys_table, resolved.state_table, resolved.instance_id,
            resolved.secrets_parameter, resolved.container_secrets_parameter,
            resolved.s3_bucket, resolved.stream_url) == (
        KEYS_TABLE, STATE_TABLE, deployment.instance_id, SECRETS_PARAMETER,
        CONTAINER_SECRETS_PARAMETER, "ocedge-test-workspace", WEB_URL)
    # An explicit setting wins over the output.
    assert resolve(settings.with_overrides(keys_table="mine")).keys_table == "mine"
    # And the backends follow the stack by themselves.
    backends = backends_for_tools(settings)
    assert asyncio.run(backends.state.get()) == ContainerState()


def test_an_unknown_stack_is_a_clear_error(aws: Boto3Api) -> None:
    with pytest.raises(BackendError, match="no CloudFormation stack named 'nope'"):
        resolve(aws_settings(None, stack="nope"))


def test_aws_backends_need_their_table_names() -> None:
    from infra.settings import SettingsError

    with pytest.raises(SettingsError, match="OCEDGE_KEYS_TABLE and OCEDGE_STATE_TABLE"):
        backends_for_tools(aws_settings(None))


def test_importing_the_backends_loads_no_aws_library() -> None:
    code = ("import sys, infra.backends, infra.interfaces, edge.auth; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('boto3', 'botocore', 'aiobotocore', 'nacl'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == []


# -- the edge's view: aiobotocore against a moto server ---------------------------------


def _authenticator(keys: Any, pepper: bytes) -> Authenticator:
    return Authenticator(keys, pepper, SessionSigner(b"s" * 32), FailureThrottle(keys, 100, 300),
                         cache_ttl=30.0)


def test_a_revoked_key_stops_working_within_the_cache_bound(moto: MotoServer) -> None:
    create_tables(moto.client("dynamodb"))
    pepper = b"p" * 32

    async def scenario() -> list[tuple[float, bool]]:
        api = AioApi(REGION, moto.url)
        keys = DynamoDBKeyStore(api, KEYS_TABLE)
        await keys.set_admin(AdminUser("admin", b"$argon2id$unused"))
        new = mint_api_key("laptop", pepper)
        await keys.put_key(new.record)
        auth = _authenticator(keys, pepper)
        presented = Presented(api_key=new.key)
        t0 = 1_000_000.0
        seen = [(0.0, (await auth.authenticate(presented, "c", now=t0)).identity is not None)]
        # The CLI revokes it, in another process, through boto3.
        cli_keys = DynamoDBKeyStore(Boto3Api(REGION, moto.url), KEYS_TABLE)
        assert await cli_keys.revoke_key(new.record.id, t0 + 1)
        for dt in (5.0, 29.0, 31.0, 45.0, 60.0):
            result = await auth.authenticate(presented, "c", now=t0 + dt)
            seen.append((dt, result.identity is not None))
        await api.aclose()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == (0.0, True)
    # Cached for at most the 30 s TTL, and refused for good from then on.
    assert all(not ok for dt, ok in seen if dt > 30.0), seen
    assert not seen[-1][1]


def test_one_aiobotocore_api_serves_its_loop_and_any_other(moto: MotoServer) -> None:
    create_tables(moto.client("dynamodb"))
    api = AioApi(REGION, moto.url)
    store = DynamoDBStateStore(api, STATE_TABLE)

    async def serve() -> ContainerState:
        await api.warm(("dynamodb",))
        return await store.get()

    # A first loop (a test's) comes and goes; the next one becomes home.
    assert asyncio.run(serve()) == ContainerState()
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(serve()) == ContainerState()
        # Another loop meanwhile (a shutdown's asyncio.run) gets a client of its own.
        assert asyncio.run(store.put_if(0, ContainerState(status=Status.STARTING, generation=1)))
        assert loop.run_until_complete(store.get()).status == Status.STARTING
        loop.run_until_complete(api.aclose())
    finally:
        loop.close()
