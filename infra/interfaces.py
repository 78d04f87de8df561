"""The interfaces the edge and the container depend on.

Three small contracts, each with a local (SQLite / child process) and an AWS
(DynamoDB / EC2) implementation beside this module:

- :class:`KeyStore`   — the admin user, API keys (hashed) and provider credentials
  (sealed);
- :class:`StateStore` — the one state item of the deployment's container;
- :class:`Compute`    — start / stop / describe the container host.
"""

from __future__ import annotations

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
    scopes: tuple[str, ...] = ("all",)

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

    @property
    def asleep(self) -> bool:
        return self.status in ASLEEP


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
                     expected_status: tuple[str, ...] | None = None) -> bool:
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


class Compute(Protocol):
    async def start(self) -> None:
        """Start the container host. Idempotent: starting a running host is a no-op."""

    async def stop(self) -> None:
        """Ask the host to stop gracefully. Idempotent."""

    async def describe(self) -> ComputeInfo: ...
