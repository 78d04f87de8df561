"""The deployment's server secrets in one SSM SecureString.

``{"version": 1, "sealing_key": hex, "pepper": hex, "session_secret": hex}``, each 32
random bytes: the sealing key opens provider credentials, the pepper keys the
API-key hashes, the session secret signs cookies. CloudFormation cannot create a
SecureString, so the first process that needs the secrets — ``ocedge init``,
normally — creates the parameter; ``Overwrite=False`` makes that race-safe (the
loser reads the winner's value). Nothing ever replaces an existing value: that
would invalidate every API key and sealed credential.

Reads are blocking (botocore/boto3): they happen once per process, at start-up or
in the CLI, and the values never change.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field

from infra.aws.client import AwsError, Boto3Api
from infra.interfaces import BackendError

SECRET_NAMES = ("sealing_key", "pepper", "session_secret")
_BYTES = 32


@dataclass(frozen=True)
class ServerSecrets:
    sealing_key: bytes = field(repr=False)
    pepper: bytes = field(repr=False)
    session_secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> ServerSecrets:
        return cls(*(secrets.token_bytes(_BYTES) for _ in SECRET_NAMES))

    def to_json(self) -> str:
        return json.dumps({"version": 1, **{name: getattr(self, name).hex()
                                            for name in SECRET_NAMES}})

    @classmethod
    def from_json(cls, text: str, parameter: str) -> ServerSecrets:
        try:
            doc = json.loads(text)
            values = [bytes.fromhex(doc[name]) for name in SECRET_NAMES]
        except (ValueError, KeyError, TypeError):
            raise BackendError(
                f"the SSM parameter {parameter!r} does not hold opencode-edge secrets (JSON "
                f"with {', '.join(SECRET_NAMES)}); it is not ours, or was edited") from None
        if any(len(value) < 16 for value in values):
            raise BackendError(f"the SSM parameter {parameter!r} holds secrets that are too short")
        return cls(*values)


class SsmSecrets:
    """Reads (and, when asked, creates) the secrets parameter; caches what it read."""

    def __init__(self, api: Boto3Api, parameter: str | None) -> None:
        self.api = api
        self._parameter = parameter
        self._lock = threading.Lock()
        self._cached: ServerSecrets | None = None

    @property
    def parameter(self) -> str:
        if not self._parameter:
            raise BackendError("no secrets parameter is configured: set "
                               "OCEDGE_SECRETS_PARAMETER or use --stack NAME (the stack's "
                               "SecretsParameter output)")
        return self._parameter

    def _read(self) -> ServerSecrets | None:
        try:
            response = self.api.call_sync("ssm", "get_parameter", Name=self.parameter,
                                          WithDecryption=True)
        except AwsError as exc:
            if exc.code == "ParameterNotFound":
                return None
            raise
        return ServerSecrets.from_json(str(response["Parameter"]["Value"]), self.parameter)

    def read(self) -> ServerSecrets | None:
        """The secrets, or None before ``ocedge init`` created them."""
        with self._lock:
            if self._cached is None:
                self._cached = self._read()
            return self._cached

    def ensure(self) -> bool:
        """Create the parameter if it is missing; True if this call created it."""
        with self._lock:
            if self._cached is not None:
                return False
            found = self._read()
            if found is not None:
                self._cached = found
                return False
            fresh = ServerSecrets.generate()
            try:
                self.api.call_sync(
                    "ssm", "put_parameter", Name=self.parameter, Value=fresh.to_json(),
                    Type="SecureString", Overwrite=False,
                    Description="opencode-edge server secrets (sealing key, pepper, "
                                "session secret); created by ocedge init. Never edit.")
            except AwsError as exc:
                if exc.code != "ParameterAlreadyExists":
                    raise
                # Someone else created it between our read and our write: theirs wins.
                self._cached = self._read()
                return False
            self._cached = fresh
            return True

    def get(self, name: str, create: bool) -> bytes | None:
        if create:
            self.ensure()
        found = self.read()
        return getattr(found, name) if found is not None else None
