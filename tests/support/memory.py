"""In-memory key store, state store and compute, for fast unit tests of the core.

They behave like the real backends where the core depends on it — every state
write is conditional on the generation (and status), the deadline only moves up,
each call yields to the event loop the way a network call does — and they count
what was asked of them, so a test can say "exactly one start". Counters and knobs
live here, never in the production classes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from infra.agent_secrets import AgentSecret
from infra.interfaces import (
    AdminUser,
    ApiKeyRecord,
    ComputeInfo,
    ContainerState,
    Failures,
    HostBudget,
    ProviderCredential,
    Status,
)
from infra.lifecycle import Lifecycle


class MemoryKeyStore:
    """A :class:`~infra.interfaces.KeyStore` in dictionaries."""

    def __init__(self) -> None:
        self.admin: AdminUser | None = None
        self.keys: dict[str, ApiKeyRecord] = {}
        self.providers: dict[str, ProviderCredential] = {}
        self.secrets: dict[str, AgentSecret] = {}
        self.epoch = 0
        self.totp: bytes | None = None
        self.totp_step = 0
        self.failures: dict[str, Failures] = {}
        self.lookups = 0  # get_key calls
        self.failure_reads = 0  # get_failures calls

    async def get_admin(self) -> AdminUser | None:
        await asyncio.sleep(0)
        return self.admin

    async def set_admin(self, user: AdminUser) -> None:
        await asyncio.sleep(0)
        self.admin = user

    async def put_key(self, record: ApiKeyRecord) -> None:
        await asyncio.sleep(0)
        if record.id in self.keys:
            raise ValueError(f"an API key with id {record.id} exists")
        self.keys[record.id] = record

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        await asyncio.sleep(0)
        self.lookups += 1
        return self.keys.get(key_id)

    async def list_keys(self) -> list[ApiKeyRecord]:
        await asyncio.sleep(0)
        return sorted(self.keys.values(), key=lambda r: r.created)

    async def revoke_key(self, key_id: str, when: float) -> bool:
        await asyncio.sleep(0)
        record = self.keys.get(key_id)
        if record is None:
            return False
        if record.revoked is None:
            self.keys[key_id] = dataclasses.replace(record, revoked=when)
        return True

    async def touch_key(self, key_id: str, when: float) -> None:
        await asyncio.sleep(0)
        record = self.keys.get(key_id)
        if record is not None:
            self.keys[key_id] = dataclasses.replace(record, last_used=when)

    async def rehash_key(self, key_id: str, expected: bytes, new: bytes) -> bool:
        await asyncio.sleep(0)
        record = self.keys.get(key_id)
        if record is None or record.secret_hash != expected:
            return False
        self.keys[key_id] = dataclasses.replace(record, secret_hash=new)
        return True

    async def reseal_provider(self, provider: str, expected: bytes, sealed: bytes) -> bool:
        await asyncio.sleep(0)
        old = self.providers.get(provider)
        if old is None or old.sealed != expected:
            return False
        self.providers[provider] = dataclasses.replace(old, sealed=sealed)
        return True

    async def put_provider(self, provider: str, sealed: bytes, when: float) -> None:
        await asyncio.sleep(0)
        old = self.providers.get(provider)
        self.providers[provider] = ProviderCredential(
            provider, sealed, created=old.created if old else when, updated=when)

    async def get_provider(self, provider: str) -> ProviderCredential | None:
        await asyncio.sleep(0)
        return self.providers.get(provider)

    async def list_providers(self) -> list[ProviderCredential]:
        await asyncio.sleep(0)
        return [self.providers[name] for name in sorted(self.providers)]

    async def remove_provider(self, provider: str) -> bool:
        await asyncio.sleep(0)
        return self.providers.pop(provider, None) is not None

    async def put_secret(self, name: str, sealed: bytes, when: float) -> None:
        await asyncio.sleep(0)
        old = self.secrets.get(name)
        self.secrets[name] = AgentSecret(name, sealed, old.created if old else when, when)

    async def list_secrets(self) -> list[AgentSecret]:
        await asyncio.sleep(0)
        return [self.secrets[name] for name in sorted(self.secrets)]

    async def remove_secret(self, name: str) -> bool:
        await asyncio.sleep(0)
        return self.secrets.pop(name, None) is not None

    async def reseal_secret(self, name: str, expected: bytes, sealed: bytes) -> bool:
        await asyncio.sleep(0)
        old = self.secrets.get(name)
        if old is None or old.sealed != expected:
            return False
        self.secrets[name] = dataclasses.replace(old, sealed=sealed)
        return True

    async def session_epoch(self) -> int:
        await asyncio.sleep(0)
        return self.epoch

    async def end_sessions(self) -> int:
        await asyncio.sleep(0)
        self.epoch += 1
        return self.epoch

    async def get_totp(self) -> bytes | None:
        await asyncio.sleep(0)
        return self.totp

    async def set_totp(self, sealed: bytes | None) -> None:
        await asyncio.sleep(0)
        self.totp, self.totp_step = sealed, 0

    async def use_totp_step(self, step: int) -> bool:
        await asyncio.sleep(0)
        if step <= self.totp_step:
            return False
        self.totp_step = step
        return True

    async def count_failure(self, name: str, now: float, window: float) -> Failures:
        await asyncio.sleep(0)
        # Read and write with no await between: the store's atomic update.
        old = self.failures.get(name)
        if old is None or now - old.since >= window:
            new = Failures(1, now)
        else:
            new = Failures(old.count + 1, old.since)
        self.failures[name] = new
        return new

    async def forgive_failure(self, name: str, since: float) -> None:
        await asyncio.sleep(0)
        old = self.failures.get(name)
        if old is not None and old.since == since and old.count > 0:
            self.failures[name] = Failures(old.count - 1, old.since)

    async def get_failures(self, name: str) -> Failures | None:
        await asyncio.sleep(0)
        self.failure_reads += 1
        return self.failures.get(name)

    async def clear_failures(self, name: str) -> None:
        await asyncio.sleep(0)
        self.failures.pop(name, None)


@dataclass(frozen=True)
class Write:
    """One successful write to the state item."""

    writer: str
    kind: str  # "put" or "deadline"
    state: ContainerState


class MemoryStateStore:
    """A :class:`~infra.interfaces.StateStore` holding one item, with the real
    stores' conditions: ``put_if`` needs the expected generation (and status),
    ``extend_deadline`` only raises the running generation's deadline."""

    def __init__(self, initial: ContainerState | None = None) -> None:
        self.item = initial or ContainerState()
        self.writes: list[Write] = []
        self.reads = 0
        self.refused = 0  # conditional writes that lost

    async def get(self) -> ContainerState:
        await asyncio.sleep(0)
        self.reads += 1
        return self.item

    async def put_if(self, expected_generation: int, new: ContainerState,
                     expected_status: tuple[Status, ...] | None = None) -> bool:
        await asyncio.sleep(0)
        # Check and write with no await between: the store's atomic condition.
        if self.item.generation != expected_generation or (
                expected_status is not None and self.item.status not in expected_status):
            self.refused += 1
            return False
        self.item = new
        self.writes.append(Write(new.lease_owner or "-", "put", new))
        return True

    async def extend_deadline(self, generation: int, deadline: float, now: float,
                              writer: str) -> bool:
        await asyncio.sleep(0)
        item = self.item
        if item.generation != generation or item.status != Status.RUNNING or (
                item.deadline is not None and item.deadline >= deadline):
            self.refused += 1
            return False
        self.item = dataclasses.replace(item, deadline=deadline, last_activity=now)
        self.writes.append(Write(writer, "deadline", self.item))
        return True

    def generations(self) -> list[int]:
        """The generation of every write, in order (they must never go down)."""
        return [write.state.generation for write in self.writes]


@dataclass
class MemoryCompute:
    """A :class:`~infra.interfaces.Compute` whose host is a flag.

    By default a start boots a container that registers itself as running in
    ``state`` after ``boot`` seconds (through the real :class:`Lifecycle`), and a
    stop makes it record ``stopped``. The knobs make it misbehave: ``start_error``
    (start raises), ``registers=False`` (the host runs but the container never
    comes up), ``exit_code`` (how the host ended, once it is not running).
    """

    state: MemoryStateStore | None = None
    boot: float = 0.0
    host: str = "memory"
    budget: HostBudget = field(default_factory=HostBudget)
    registers: bool = True
    start_error: Exception | None = None
    exit_code: int | None = None
    running: bool = False
    starts: int = 0
    stops: int = 0
    describes: int = 0
    _boots: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    async def start(self) -> None:
        await asyncio.sleep(0)
        self.starts += 1
        if self.start_error is not None:
            raise self.start_error
        if self.running:
            return
        self.running = True
        if self.registers and self.state is not None:
            self._boots.append(asyncio.ensure_future(self._register(self.state)))

    async def _register(self, state: MemoryStateStore) -> None:
        await asyncio.sleep(self.boot)
        container = Lifecycle(state, owner="container:memory")
        await container.register_running("127.0.0.1:1", "internal", None, idle_timeout=600)

    async def stop(self) -> None:
        await asyncio.sleep(0)
        self.stops += 1
        if not self.running:
            return
        self.running = False
        if self.state is not None:
            current = await self.state.get()
            if current.status == Status.RUNNING:
                await Lifecycle(self.state, owner="container:memory").mark_stopped(
                    current.generation)

    async def describe(self) -> ComputeInfo:
        await asyncio.sleep(0)
        self.describes += 1
        if self.running:
            return ComputeInfo(running=True, detail="memory host")
        return ComputeInfo(running=False, exit_code=self.exit_code)

    def crash(self, exit_code: int | None = None) -> None:
        """The host dies without a word to the state item (kill -9, power loss)."""
        self.running = False
        self.exit_code = exit_code
