"""The interfaces the edge and the container depend on.

Three small contracts, each with a local (SQLite / child process) and an AWS
(DynamoDB / EC2) implementation beside this module:

- :class:`KeyStore`   — the admin user, API keys (hashed) and provider credentials
  (sealed);
- :class:`StateStore` — the one state item of the deployment's container;
- :class:`Compute`    — start / stop / describe the container host;

and where the server's own secrets come from (:class:`SecretSource`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Status(StrEnum):
    """Container lifecycle: stopped → starting → running → stopping → stopped.

    ``failed`` is a stopped container that did not stop cleanly (``reason`` says why).
    A StrEnum, so the stores write and read the plain string.
    """

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"


STOPPED = Status.STOPPED
STARTING = Status.STARTING
RUNNING = Status.RUNNING
STOPPING = Status.STOPPING
FAILED = Status.FAILED
STATUSES = tuple(Status)
ASLEEP = (Status.STOPPED, Status.FAILED)


@dataclass(frozen=True)
class AdminUser:
    username: str
    password_hash: bytes  # argon2id string from nacl.pwhash


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored: never the secret, only its keyed hash."""

    id: str
    name: str
    secret_hash: bytes
    created: float
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None

    def usable_at(self, now: float) -> bool:
        if self.revoked is not None:
            return False
        return self.expires is None or now < self.expires


@dataclass(frozen=True)
class ProviderCredential:
    """A model provider's API key (BYOK), as stored: sealed, never in the clear.

    ``provider`` is opencode's provider id (``anthropic``, ``openai``, …); ``sealed``
    opens only with the deployment's sealing key (see :mod:`infra.providers`).
    """

    provider: str
    sealed: bytes = field(repr=False)
    created: float
    updated: float


class BackendError(RuntimeError):
    """A store or compute call failed in a way the user can act on.

    The message names what is missing or wrong and what to do; it never carries
    a secret. The CLI prints it without a traceback.
    """


@dataclass(frozen=True)
class ContainerState:
    """The deployment's one state item.

    Every write is conditional on the ``generation`` the writer expects, so a
    container from an older generation can never overwrite a newer one.
    """

    status: Status = Status.STOPPED
    generation: int = 0
    since: float = 0.0
    endpoint: str | None = None  # "host:port" of the container's listener
    credential: str | None = field(default=None, repr=False)  # internal password
    cert_pem: str | None = None
    deadline: float | None = None
    last_activity: float | None = None
    lease_owner: str | None = None
    reason: str | None = None
    busy: bool = False


class KeyStore(Protocol):
    async def get_admin(self) -> AdminUser | None:
        """The admin user, or None before the deployment is initialised."""

    async def set_admin(self, user: AdminUser) -> None: ...

    async def put_key(self, record: ApiKeyRecord) -> None:
        """Store a new key; raises ValueError if the id exists."""

    async def get_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def list_keys(self) -> list[ApiKeyRecord]: ...

    async def revoke_key(self, key_id: str, when: float) -> bool:
        """Mark a key revoked; False if there is no such key."""

    async def touch_key(self, key_id: str, when: float) -> None:
        """Record that a key was used (callers throttle how often)."""

    async def put_provider(self, provider: str, sealed: bytes, when: float) -> None:
        """Store (or replace) the sealed credential of ``provider``."""

    async def get_provider(self, provider: str) -> ProviderCredential | None: ...

    async def list_providers(self) -> list[ProviderCredential]:
        """Every stored provider credential, by provider id."""

    async def remove_provider(self, provider: str) -> bool:
        """Delete ``provider``'s credential; False if there was none."""


class StateStore(Protocol):
    async def get(self) -> ContainerState: ...

    async def put_if(self, expected_generation: int, new: ContainerState,
                     expected_status: tuple[Status, ...] | None = None) -> bool:
        """Write ``new`` only if the stored generation (and status, when given)
        is still what the caller expects. Returns whether it was written."""

    async def extend_deadline(self, generation: int, deadline: float, now: float,
                              writer: str) -> bool:
        """Atomically raise the deadline to ``deadline`` if the container of
        ``generation`` is running and its deadline is earlier; never lowers it."""


@dataclass(frozen=True)
class ComputeInfo:
    """What the compute backend sees of the host: running or not, and how it ended."""

    running: bool
    exit_code: int | None = None
    detail: str = ""


class SecretSource(Protocol):
    """The deployment's server secrets: 0600 files locally, one SSM parameter on AWS."""

    def get(self, name: str, create: bool) -> bytes | None:
        """Server secret ``name`` (``pepper``, ``session_secret``, ``sealing_key``);
        with ``create``, made (once, for everyone) if it does not exist yet."""

    def ensure(self) -> bool:
        """Create whatever secrets are missing; True if any was created now."""


class Compute(Protocol):
    async def start(self) -> None:
        """Start the container host. Idempotent: starting a running host is a no-op."""

    async def stop(self) -> None:
        """Ask the host to stop gracefully. Idempotent."""

    async def describe(self) -> ComputeInfo: ...


class Clients(Protocol):
    """The AWS clients a process opened (:class:`infra.aws.client.AwsApi`)."""

    async def warm(self, services: tuple[str, ...]) -> None: ...

    async def aclose(self) -> None: ...


class Backends:
    """The key store, state store and compute of a deployment, and its server secrets.

    The secrets are read on first use (for AWS: one SSM call) and kept: the
    container never reads the pepper or cookie key, the edge never the sealing key.
    """

    def __init__(self, keys: KeyStore, state: StateStore, compute: Compute,
                 secrets: SecretSource, overrides: dict[str, bytes] | None = None,
                 api: Clients | None = None) -> None:
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
