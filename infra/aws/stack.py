"""Find a deployment's resources from its CloudFormation stack's outputs.

``ocedge --stack NAME`` (or ``OCEDGE_STACK``) means: read the table names, the
instance, the two secrets parameters, the bucket and the region from the outputs of
stack NAME. Settings given explicitly win over the outputs.
"""

from __future__ import annotations

from typing import Any

from infra.aws.client import AwsError, Boto3Api
from infra.interfaces import BackendError
from infra.settings import Settings

# Stack output → setting it fills.
OUTPUTS = {
    "KeysTable": "keys_table",
    "StateTable": "state_table",
    "InstanceId": "instance_id",
    "SecretsParameter": "secrets_parameter",
    "ContainerSecretsParameter": "container_secrets_parameter",
    "BucketName": "s3_bucket",
    "Region": "aws_region",
    "WebUrl": "stream_url",
    "NotifyTopic": "notify_topic",
}
# Outputs that are shown to the user but are not settings.
SHOWN = ("WebUrl", "ApiUrl")
REQUIRED = ("KeysTable", "StateTable", "InstanceId", "SecretsParameter")


def stack_outputs(stack: str, region: str | None, endpoint: str | None,
                  api: Boto3Api | None = None) -> dict[str, str]:
    api = api or Boto3Api(region, endpoint)
    try:
        response = api.call_sync("cloudformation", "describe_stacks", StackName=stack)
    except AwsError as exc:
        if exc.code == "ValidationError":
            raise BackendError(
                f"no CloudFormation stack named {stack!r} in "
                f"{region or 'the default region'}: check the name and the region "
                "(OCEDGE_AWS_REGION / AWS_REGION), or deploy it with `sam deploy`") from None
        raise
    stacks: list[dict[str, Any]] = response.get("Stacks", [])
    if not stacks:
        raise BackendError(f"no CloudFormation stack named {stack!r}")
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}


def apply_outputs(settings: Settings, outputs: dict[str, str]) -> Settings:
    """``settings`` with the names from ``outputs`` filled in (explicit settings kept)."""
    missing = [name for name in REQUIRED if name not in outputs]
    if missing:
        raise BackendError(f"the stack {settings.stack!r} has no output {', '.join(missing)}: "
                           "is it an opencode-edge stack, fully deployed?")
    changes: dict[str, Any] = {"backend": "aws"}
    for output, setting in OUTPUTS.items():
        if output in outputs and getattr(settings, setting) in (None, ""):
            changes[setting] = outputs[output]
    if "s3_bucket" in changes:
        # The stack's bucket holds its workspace (the host runs with OCEDGE_WORKSPACE=s3).
        changes["workspace"] = "s3"
    return settings.with_overrides(**changes)


def resolve(settings: Settings, api: Boto3Api | None = None) -> Settings:
    """``settings`` with every resource name the stack knows filled in (explicit ones kept)."""
    if not settings.stack:
        return settings
    return apply_outputs(settings, stack_outputs(settings.stack, settings.aws_region,
                                                 settings.aws_endpoint, api))
