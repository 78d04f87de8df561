"""The deployment's server secrets in two SSM SecureStrings, split by who reads them.

- ``/opencode-edge/<stack>/edge-secrets`` (output ``SecretsParameter``, setting
  ``OCEDGE_SECRETS_PARAMETER``): the edge's document — the API-key peppers and the
  cookie key. The edge functions may read it (and create it, if an edge starts before
  ``ocedge init``); the host role may not.
- ``/opencode-edge/<stack>/container-secrets`` (output ``ContainerSecretsParameter``,
  setting ``OCEDGE_CONTAINER_SECRETS_PARAMETER``): the container's — the sealing key
  that opens provider keys. The host role may read it; the edge functions may not.

The documents are :mod:`infra.secrets`'s JSON. CloudFormation cannot create a
SecureString, so ``ocedge init`` creates them (``Overwrite=False``: a racing creator
reads the winner's); only ``ocedge admin rotate-secrets`` replaces them.

Reads are blocking (botocore/boto3): once per process, and then on the edge every
``OCEDGE_KEY_CACHE_TTL`` seconds off the event loop.
"""

from __future__ import annotations

from infra.aws.client import AwsError, Boto3Api
from infra.errors import BackendError
from infra.secrets import CONTAINER, EDGE

_SETTINGS = {EDGE: ("OCEDGE_SECRETS_PARAMETER", "SecretsParameter"),
             CONTAINER: ("OCEDGE_CONTAINER_SECRETS_PARAMETER", "ContainerSecretsParameter")}
_DESCRIPTIONS = {
    EDGE: "opencode-edge: the edge's secrets (API-key peppers, cookie key). Made by ocedge "
          "init, replaced by ocedge admin rotate-secrets. Never edit.",
    CONTAINER: "opencode-edge: the container's secret (the provider-key sealing key). Made "
               "by ocedge init, replaced by ocedge admin rotate-secrets. Never edit.",
}


class SsmSecrets:
    """A :class:`~infra.secrets.SecretSource` of two SSM SecureString parameters."""

    def __init__(self, api: Boto3Api, edge: str | None, container: str | None) -> None:
        self.api = api
        self._parameters = {EDGE: edge, CONTAINER: container}

    def where(self, name: str) -> str:
        parameter = self._parameters[name]
        if not parameter:
            setting, output = _SETTINGS[name]
            raise BackendError(f"no SSM parameter is configured for the {name}'s secrets: set "
                               f"{setting} or use --stack NAME (the stack's {output} output)")
        return parameter

    def read(self, name: str) -> str | None:
        try:
            response = self.api.call_sync("ssm", "get_parameter", Name=self.where(name),
                                          WithDecryption=True)
        except AwsError as exc:
            if exc.code == "ParameterNotFound":
                return None
            raise
        return str(response["Parameter"]["Value"])

    def create(self, name: str, text: str) -> bool:
        try:
            self.api.call_sync("ssm", "put_parameter", Name=self.where(name), Value=text,
                               Type="SecureString", Overwrite=False,
                               Description=_DESCRIPTIONS[name])
        except AwsError as exc:
            if exc.code == "ParameterAlreadyExists":
                return False
            raise
        return True

    def replace(self, name: str, text: str) -> None:
        self.api.call_sync("ssm", "put_parameter", Name=self.where(name), Value=text,
                           Type="SecureString", Overwrite=True)
