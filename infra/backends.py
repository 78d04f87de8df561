"""Pick the store and compute implementations a deployment's settings ask for.

``backend=local``: SQLite under the state directory, a child process, secrets in
0600 files. ``backend=aws`` (or a ``stack`` setting): DynamoDB, EC2 and the SSM
secrets parameter. boto3 and aiobotocore are imported only when an AWS backend
is opened, never by importing this module.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from infra.credentials import load_or_create_secret, secret_from_setting
from infra.interfaces import Compute, KeyStore, StateStore
from infra.settings import Settings, SettingsError

if TYPE_CHECKING:
    from infra.aws.client import AwsApi, Flavour


class SecretSource(Protocol):
    def get(self, name: str, create: bool) -> bytes | None:
        """Server secret ``name`` (``pepper``, ``session_secret``, ``sealing_key``);
        with ``create``, made (once, for everyone) if it does not exist yet."""

    def ensure(self) -> bool:
        """Create whatever secrets are missing; True if any was created now."""


_LOCAL_SECRET_FILES = {"pepper": "pepper.key", "session_secret": "session.key",
                       "sealing_key": "sealing.key"}


class LocalSecrets:
    """Each secret in a 0600 file under the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def get(self, name: str, create: bool) -> bytes | None:
        path = self.state_dir / _LOCAL_SECRET_FILES[name]
        if create:
            return load_or_create_secret(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data[:32] if len(data) >= 32 else None

    def ensure(self) -> bool:
        missing = [name for name in _LOCAL_SECRET_FILES if self.get(name, create=False) is None]
        for name in missing:
            self.get(name, create=True)
        return bool(missing)


class Backends:
    """The key store, state store and compute of a deployment, and its server secrets.

    The secrets are read on first use (for AWS: one SSM call) and kept: the
    container never reads the pepper or cookie key, the edge never the sealing key.
    """

    def __init__(self, keys: KeyStore, state: StateStore, compute: Compute,
                 secrets: SecretSource, overrides: dict[str, bytes] | None = None,
                 api: AwsApi | None = None) -> None:
        self.keys = keys
        self.state = state
        self.compute = compute
        self.secrets = secrets
        self.api = api
        self._known: dict[str, bytes] = dict(overrides or {})
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Backends(keys={type(self.keys).__name__}, state={type(self.state).__name__}, "
                f"compute={type(self.compute).__name__})")

    def _secret(self, name: str, create: bool = True) -> bytes | None:
        with self._lock:
            value = self._known.get(name)
            if value is None:
                value = self.secrets.get(name, create)
                if value is not None:
                    self._known[name] = value
            return value

    @property
    def pepper(self) -> bytes:
        """Keys the API-key hashes; never leaves the server."""
        value = self._secret("pepper")
        assert value is not None
        return value

    @property
    def session_secret(self) -> bytes:
        """Signs the session cookies; never leaves the server."""
        value = self._secret("session_secret")
        assert value is not None
        return value

    def sealing_key(self, create: bool = True) -> bytes | None:
        """Opens provider credentials. Without ``create``: None if none was ever made
        (so nothing can have been sealed)."""
        return self._secret("sealing_key", create)

    async def warm(self) -> None:
        """Load the AWS library and open the DynamoDB and EC2 clients now (the edge's
        start-up: about 0.9 s that the first request would otherwise wait for)."""
        if self.api is not None:
            await self.api.warm(("dynamodb", "ec2"))

    async def aclose(self) -> None:
        """Close the AWS clients of the running event loop (the edge at shutdown)."""
        if self.api is not None:
            await self.api.aclose()


def _overrides(settings: Settings) -> dict[str, bytes]:
    found = {}
    if settings.pepper:
        found["pepper"] = secret_from_setting(settings.pepper)
    if settings.session_secret:
        found["session_secret"] = secret_from_setting(settings.session_secret)
    return found


def open_backends(settings: Settings, aws_client: Flavour = "boto3") -> Backends:
    """The backends ``settings`` ask for.

    ``aws_client`` picks the AWS library: ``"aiobotocore"`` for the edge (its
    request path stays on the event loop, one client per process), ``"boto3"`` for
    the CLI, the container and the reaper. The local backend ignores it.
    """
    if settings.backend == "aws" or settings.stack:
        return open_aws_backends(settings, aws_client)
    if settings.backend != "local":
        raise SettingsError(f"backend {settings.backend!r} is not available in this build")
    from infra.local.compute import LocalCompute
    from infra.local.db import database
    from infra.local.keys import LocalKeyStore
    from infra.local.state import LocalStateStore

    state_dir = settings.state_dir.resolve()
    db = database(state_dir)
    return Backends(
        keys=LocalKeyStore(db),
        state=LocalStateStore(db),
        compute=LocalCompute(state_dir, env=settings.child_env(),
                             stop_timeout=settings.stop_budget + 15),
        secrets=LocalSecrets(state_dir),
        overrides=_overrides(settings),
    )


def open_aws_backends(settings: Settings, aws_client: Flavour = "boto3") -> Backends:
    """DynamoDB stores, EC2 compute and SSM secrets; names from the settings, or
    from the stack's outputs when ``stack`` is set."""
    from infra.aws.client import Boto3Api, BotocoreApi, open_api
    from infra.aws.compute import EC2Compute
    from infra.aws.keys import DynamoDBKeyStore
    from infra.aws.secrets import SsmSecrets
    from infra.aws.state import DynamoDBStateStore

    settings = resolve_stack(settings)
    missing = [f"OCEDGE_{name.upper()}" for name in ("keys_table", "state_table")
               if not getattr(settings, name)]
    if missing:
        raise SettingsError(f"OCEDGE_BACKEND=aws needs {' and '.join(missing)}, or "
                            "OCEDGE_STACK (--stack NAME) to read them from the stack's outputs")
    assert settings.keys_table is not None and settings.state_table is not None
    api = open_api(aws_client, settings.aws_region, settings.aws_endpoint)
    # Secrets are read with blocking calls, once; on the edge that happens at
    # start-up with plain botocore (no boto3 import there).
    sync = (BotocoreApi if aws_client == "aiobotocore" else Boto3Api)(
        settings.aws_region, settings.aws_endpoint)
    return Backends(
        keys=DynamoDBKeyStore(api, settings.keys_table),
        state=DynamoDBStateStore(api, settings.state_table),
        compute=EC2Compute(api, settings.instance_id),
        secrets=SsmSecrets(sync, settings.secrets_parameter),
        overrides=_overrides(settings),
        api=api,
    )


def resolve_stack(settings: Settings) -> Settings:
    """Fill resource names in from the CloudFormation stack when ``stack`` is set."""
    if not settings.stack:
        return settings
    from infra.aws.stack import resolve

    return resolve(settings)
