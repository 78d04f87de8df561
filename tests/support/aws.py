"""AWS for tests, all moto: a moto server aiobotocore can talk to, the deployment's
tables (shaped as template.yaml creates them), its instance and its stack.

Two ways in:

- in-process ``moto.mock_aws`` for boto3 code (unit tests);
- :class:`MotoServer`, a real HTTP endpoint on 127.0.0.1 for aiobotocore (which
  ``mock_aws`` cannot intercept) and for other processes (the edge, the CLI). Point
  ``aws_endpoint`` at ``server.url``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from infra.net import free_port
from infra.settings import Settings

REGION = "us-east-1"
STACK = "ocedge-test"
KEYS_TABLE = "ocedge-test-keys"
STATE_TABLE = "ocedge-test-state"
SECRETS_PARAMETER = "/ocedge-test/edge-secrets"
CONTAINER_SECRETS_PARAMETER = "/ocedge-test/container-secrets"
WEB_URL = "https://web.example.test/"
API_URL = "https://api.example.test/"
# moto accepts any credentials; these make sure no real ones are ever used.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                    "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}


class MotoServer:
    """moto's server app on 127.0.0.1:<port>, with one request handled at a time.

    DynamoDB applies conditional writes to an item one at a time; moto's threaded
    server does not (it checks, then writes, from several threads), so a race
    test could see two winners that real DynamoDB never allows. A lock around
    the app restores that guarantee while keeping HTTP keep-alive.
    """

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serial(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            with lock:
                return list(app(environ, start_response))

        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", self.port, serial, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> MotoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)

    def reset(self) -> None:
        """Forget every resource (moto's own reset endpoint)."""
        import httpx

        httpx.post(f"{self.url}/moto-api/reset", timeout=10, trust_env=False).raise_for_status()

    def client(self, service: str) -> Any:
        session: Any = boto3.session.Session(region_name=REGION)
        return session.client(service, endpoint_url=self.url)


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials in the environment; no profile or real account can leak in."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoServer, aws_credentials: None) -> Iterator[MotoServer]:
    """The shared moto server, emptied before each test."""
    moto_server.reset()
    yield moto_server


# -- the deployment's resources ---------------------------------------------------------

# The two tables exactly as template.yaml declares them (see infra/aws/__init__.py).
KEYS_TABLE_PROPERTIES: dict[str, Any] = {
    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                             {"AttributeName": "sk", "AttributeType": "S"}],
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                  {"AttributeName": "sk", "KeyType": "RANGE"}],
    "BillingMode": "PAY_PER_REQUEST",
}
STATE_TABLE_PROPERTIES: dict[str, Any] = {
    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
    "BillingMode": "PAY_PER_REQUEST",
}


def create_tables(dynamodb: Any, keys_table: str = KEYS_TABLE,
                  state_table: str = STATE_TABLE) -> None:
    dynamodb.create_table(TableName=keys_table, **KEYS_TABLE_PROPERTIES)
    dynamodb.create_table(TableName=state_table, **STATE_TABLE_PROPERTIES)


def create_instance(ec2: Any, state: str = "stopped") -> str:
    """The container host: one instance, stopped as a fresh deployment leaves it."""
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id: str = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                                         InstanceType="t3.small")["Instances"][0]["InstanceId"]
    if state == "stopped":
        ec2.stop_instances(InstanceIds=[instance_id])
    return instance_id


def instance_state(ec2: Any, instance_id: str) -> str:
    response = ec2.describe_instances(InstanceIds=[instance_id])
    return str(response["Reservations"][0]["Instances"][0]["State"]["Name"])


def set_instance_state(instance_id: str, name: str) -> None:
    """Put moto's instance in a state moto never lingers in (pending, stopping)."""
    from moto.backends import get_backend
    from moto.core.models import DEFAULT_ACCOUNT_ID

    instance = get_backend("ec2")[DEFAULT_ACCOUNT_ID][REGION].get_instance(instance_id)
    codes = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
             "stopping": 64, "stopped": 80}
    instance._state.name = name
    instance._state.code = codes[name]


@dataclass(frozen=True)
class Deployment:
    """What ``sam deploy`` leaves behind, in moto."""

    stack: str
    keys_table: str
    state_table: str
    instance_id: str
    secrets_parameter: str


def create_stack(cloudformation: Any, ec2: Any, stack: str = STACK) -> Deployment:
    """A stack that creates the tables the way template.yaml does and has its outputs."""
    instance_id = create_instance(ec2)
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "KeysTable": {"Type": "AWS::DynamoDB::Table",
                          "Properties": {"TableName": KEYS_TABLE, **KEYS_TABLE_PROPERTIES}},
            "StateTable": {"Type": "AWS::DynamoDB::Table",
                           "Properties": {"TableName": STATE_TABLE, **STATE_TABLE_PROPERTIES}},
        },
        "Outputs": {
            "KeysTable": {"Value": {"Ref": "KeysTable"}},
            "StateTable": {"Value": {"Ref": "StateTable"}},
            "InstanceId": {"Value": instance_id},
            "SecretsParameter": {"Value": SECRETS_PARAMETER},
            "ContainerSecretsParameter": {"Value": CONTAINER_SECRETS_PARAMETER},
            "BucketName": {"Value": "ocedge-test-workspace"},
            "Region": {"Value": REGION},
            "WebUrl": {"Value": WEB_URL},
            "ApiUrl": {"Value": API_URL},
        },
    }
    cloudformation.create_stack(StackName=stack, TemplateBody=json.dumps(template))
    return Deployment(stack, KEYS_TABLE, STATE_TABLE, instance_id, SECRETS_PARAMETER)


def aws_settings(endpoint: str | None, deployment: Deployment | None = None,
                 **overrides: Any) -> Settings:
    """AWS-backed settings naming the deployment's resources (as the template passes them)."""
    env = {"OCEDGE_BACKEND": "aws", "OCEDGE_AWS_REGION": REGION,
           "OCEDGE_KEY_CACHE_TTL": "0", "PATH": os.environ.get("PATH", os.defpath),
           **FAKE_CREDENTIALS}
    if endpoint:
        env["OCEDGE_AWS_ENDPOINT"] = endpoint
    if deployment is not None:
        env.update({"OCEDGE_KEYS_TABLE": deployment.keys_table,
                    "OCEDGE_STATE_TABLE": deployment.state_table,
                    "OCEDGE_INSTANCE_ID": deployment.instance_id,
                    "OCEDGE_SECRETS_PARAMETER": deployment.secrets_parameter,
                    "OCEDGE_CONTAINER_SECRETS_PARAMETER": CONTAINER_SECRETS_PARAMETER})
    settings = Settings.from_env(env)
    return settings.with_overrides(**overrides) if overrides else settings
