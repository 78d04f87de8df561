"""The interfaces the edge and the container depend on.

Three small contracts, each with a local (SQLite / child process) and an AWS
(DynamoDB / EC2) implementation beside this module:

- :class:`KeyStore`   — the admin user (with its session epoch, sealed TOTP secret
  and failed-login counters), API keys (hashed) and provider credentials (sealed);
- :class:`StateStore` — the one state item of the deployment's container;
- :class:`Compute`    — start / stop / describe the container host;

and where the server's own secrets are kept (:class:`SecretSource`, defined with the
secrets themselves in :mod:`infra.secrets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Protocol

# Defined beside the code that needs them; named here with the other contracts.
from infra.agent_secrets import AgentSecretStore
from infra.errors import BackendError as BackendError
from infra.secrets import EdgeSecrets, Peppers, ServerSecrets
from infra.secrets import SecretSource as SecretSource


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


@dataclass(frozen=True)
class Failures:
    """Failed logins counted against one name (a client address, or the global
    counter of admin-password failures) in the window that began at ``since``."""

    count: int
    since: float

    def current(self, now: float, window: float) -> int:
        """The count, or 0 once its window has passed."""
        return self.count if now - self.since < window else 0


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
    # The compute host a start was asked of, and the container then runs on (the EC2
    # instance id; "local" for a child process). A host only starts a container for a
    # start asked of it, and nobody who cannot see that host marks its container gone.
    host: str | None = None
    # The steps of the current start as (step, time) pairs, oldest first: written by
    # whoever performs each one (the waker, the container), for whoever shows a wake.
    steps: tuple[tuple[str, float], ...] = ()


class KeyStore(AgentSecretStore, Protocol):  # agent secrets: see infra/agent_secrets.py
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

    async def rehash_key(self, key_id: str, expected: bytes, new: bytes) -> bool:
        """Replace a key's stored hash if it is still ``expected`` (a rotation
        re-peppers it); False if the key is gone or its hash changed meanwhile."""

    async def put_provider(self, provider: str, sealed: bytes, when: float) -> None:
        """Store (or replace) the sealed credential of ``provider``."""

    async def get_provider(self, provider: str) -> ProviderCredential | None: ...

    async def list_providers(self) -> list[ProviderCredential]:
        """Every stored provider credential, by provider id."""

    async def remove_provider(self, provider: str) -> bool:
        """Delete ``provider``'s credential; False if there was none."""

    async def reseal_provider(self, provider: str, expected: bytes, sealed: bytes) -> bool:
        """Replace ``provider``'s sealed value if it is still ``expected`` (a rotation
        re-seals it); False if it was removed or set anew meanwhile."""

    # -- sessions, 2FA, failed logins: what every edge instance must see at once ------

    async def session_epoch(self) -> int:
        """The current session epoch (0 until sessions were first ended). A session
        cookie is valid only while the epoch it was issued in is the current one."""

    async def end_sessions(self) -> int:
        """Atomically advance the session epoch, ending every session; the new epoch."""

    async def get_totp(self) -> bytes | None:
        """The admin's sealed TOTP secret, or None while 2FA is off."""

    async def set_totp(self, sealed: bytes | None) -> None:
        """Store the sealed TOTP secret (None: 2FA off); forgets the last used code."""

    async def use_totp_step(self, step: int) -> bool:
        """Atomically record that the code of time step ``step`` was used. False if
        that step or a later one was used already: each code logs in once."""

    async def count_failure(self, name: str, now: float, window: float) -> Failures:
        """Atomically count a failed login against ``name`` in its current window (a
        new one if the last began ``window`` or more seconds ago); the new counter."""

    async def forgive_failure(self, name: str, since: float) -> None:
        """Atomically take one back from ``name``'s count if its window began at ``since``."""

    async def get_failures(self, name: str) -> Failures | None:
        """The failures counted against ``name``, or None if there were none."""

    async def clear_failures(self, name: str) -> None:
        """Forget the failures of ``name`` (after a successful login)."""


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
    """What the compute backend sees of the host: running or not, and how it ended.

    ``state`` is the host's own state name where it has one (EC2: pending, running,
    stopping, stopped, …); ``phase`` reduces it to what a waker needs to know."""

    running: bool
    exit_code: int | None = None
    detail: str = ""
    state: str = ""

    @property
    def phase(self) -> str:
        """``stopping`` (still going down), ``pending`` (coming up), ``running``, or
        ``stopped`` (down, or gone)."""
        if self.state in ("stopping", "pending", "running"):
            return self.state
        if self.state:
            return "stopped"
        return "running" if self.running else "stopped"


@dataclass(frozen=True)
class HostBudget:
    """How long a compute host's own transitions may take, in seconds, on top of the
    container's start (:attr:`infra.lifecycle.Lifecycle.start_timeout`): a start is
    presumed dead only once the phase it is in has had all of its budget.

    A child process has none of these phases (all zero); an EC2 instance has every
    one (the numbers, and where they come from, are in :mod:`infra.aws.compute`).
    """

    stopping: float = 0.0  # a host still going down from the last sleep, until stopped
    pending: float = 0.0  # a host that was started, until it runs
    boot: float = 0.0  # a running host, until its container begins its own start
    # A host seen stopped under a start lease: the lease holder's start may be on its way.
    handoff: float = 0.0
    # Look at the host at most this often while waiting (describe calls cost a request).
    describe_every: float = 0.0

    @property
    def total(self) -> float:
        """Everything a host may add to a wake: stop, start and boot."""
        return self.stopping + self.pending + self.boot

    def scaled(self, factor: float) -> HostBudget:
        """The same budget on a clock running ``1/factor`` times faster (tests)."""
        return HostBudget(*(getattr(self, f.name) * factor for f in fields(self)))


class Compute(Protocol):
    # Which host this is (the EC2 instance id; "local" for a child process), and how
    # long its own transitions may take.
    host: str
    budget: HostBudget

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

    The secrets (:mod:`infra.secrets`) are read on first use and kept: the container
    reads only its own document (the sealing key), the edge only its own (the
    peppers and the cookie key), which it re-reads now and then to follow a rotation.
    """

    def __init__(self, keys: KeyStore, state: StateStore, compute: Compute,
                 secrets: SecretSource, overrides: dict[str, bytes] | None = None,
                 api: Clients | None = None) -> None:
        self.keys = keys
        self.state = state
        self.compute = compute
        self.secrets = ServerSecrets(secrets, overrides)
        self.api = api

    def __repr__(self) -> str:
        return (f"Backends(keys={type(self.keys).__name__}, state={type(self.state).__name__}, "
                f"compute={type(self.compute).__name__})")

    @property
    def edge_secrets(self) -> EdgeSecrets:
        """The edge's secrets (made if missing): the peppers and the cookie key."""
        found = self.secrets.edge(create=True)
        assert found is not None
        return found

    @property
    def pepper(self) -> Peppers:
        """Key the API-key hashes, by generation; never leave the server."""
        return self.edge_secrets.peppers

    @property
    def session_secret(self) -> bytes:
        """Signs the session cookies; never leaves the server."""
        return self.edge_secrets.session_secret

    def sealing_key(self, create: bool = True) -> bytes | None:
        """Seals provider credentials. Without ``create``: None if none was ever made
        (so nothing can have been sealed)."""
        found = self.secrets.container(create)
        return found.sealing_key if found is not None else None

    def sealing_keys(self) -> tuple[bytes, ...]:
        """Every key a stored value may be sealed under (the current one first; more
        than one only while a rotation re-seals); () if none was ever made."""
        found = self.secrets.container(create=False)
        return found.keys if found is not None else ()

    async def warm(self) -> None:
        """Load the AWS library and open the DynamoDB and EC2 clients now (the edge's
        start-up: about 0.9 s that the first request would otherwise wait for)."""
        if self.api is not None:
            await self.api.warm(("dynamodb", "ec2"))

    async def aclose(self) -> None:
        """Close the AWS clients of the running event loop (the edge at shutdown)."""
        if self.api is not None:
            await self.api.aclose()
