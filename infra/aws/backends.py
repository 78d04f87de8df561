"""The AWS backends of a deployment: DynamoDB stores, EC2 compute, SSM secrets.

Two ways to open them, one per kind of process:

- :func:`for_requests` (the edge): aiobotocore, so the request path stays on the
  event loop with one client per service for the process; the secrets are read
  once at start-up with plain botocore (no boto3 import on the edge);
- :func:`for_tools` (the CLI, the container, the reaper): boto3 in worker threads.
"""

from __future__ import annotations

from infra.aws.client import AioApi, AwsApi, Boto3Api, BotocoreApi
from infra.aws.compute import EC2Compute
from infra.aws.keys import DynamoDBKeyStore
from infra.aws.secrets import SsmSecrets
from infra.aws.state import DynamoDBStateStore
from infra.credentials import secret_overrides
from infra.interfaces import Backends
from infra.settings import Settings, SettingsError


def for_requests(settings: Settings) -> Backends:
    """The edge's backends: aiobotocore for every call on the request path."""
    settings = resolve_stack(settings)
    return _open(settings, AioApi(settings.aws_region, settings.aws_endpoint),
                 BotocoreApi(settings.aws_region, settings.aws_endpoint))


def for_tools(settings: Settings) -> Backends:
    """The CLI's, the container's and the reaper's backends: boto3."""
    settings = resolve_stack(settings)
    api = Boto3Api(settings.aws_region, settings.aws_endpoint)
    return _open(settings, api, api)


def _open(settings: Settings, api: AwsApi, secrets_api: Boto3Api) -> Backends:
    missing = [f"OCEDGE_{name.upper()}" for name in ("keys_table", "state_table")
               if not getattr(settings, name)]
    if missing:
        raise SettingsError(f"OCEDGE_BACKEND=aws needs {' and '.join(missing)}, or "
                            "OCEDGE_STACK (--stack NAME) to read them from the stack's outputs")
    assert settings.keys_table is not None and settings.state_table is not None
    return Backends(
        keys=DynamoDBKeyStore(api, settings.keys_table),
        state=DynamoDBStateStore(api, settings.state_table),
        compute=EC2Compute(api, settings.instance_id),
        # Secrets are read with blocking calls, once per process.
        secrets=SsmSecrets(secrets_api, settings.secrets_parameter,
                           settings.container_secrets_parameter),
        overrides=secret_overrides(settings),
        api=api,
    )


def resolve_stack(settings: Settings) -> Settings:
    """Fill resource names in from the CloudFormation stack when ``stack`` is set."""
    if not settings.stack:
        return settings
    from infra.aws.stack import resolve

    return resolve(settings)
