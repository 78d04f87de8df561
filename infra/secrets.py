"""The deployment's server secrets: two documents, split by who needs them.

- **The edge's** (``edge``): the cookie-signing key and the API-key peppers. The edge
  reads it (and you, through ``ocedge``); on AWS the host role cannot.
- **The container's** (``container``): the sealing key that opens provider keys. The
  container reads it (and ``ocedge``); the edge never does.

Each is a small JSON document kept by a :class:`~infra.interfaces.SecretSource` — a
0600 file locally, an SSM SecureString on AWS — and replaced by ``ocedge admin
rotate-secrets`` (:mod:`infra.rotation`).

**Peppers come in generations.** An API key's stored hash records the generation it
was minted under and the one it has been re-peppered up to (:mod:`infra.credentials`).
Re-peppering wraps the stored hash in one more keyed hash under the new pepper, so it
needs no key's secret; ``pepper_floor`` is the oldest generation a stored hash may end
at. After a rotation every valid hash ends with the new pepper: an old pepper, even
stolen, mints nothing.

**A sealing key can have predecessors** while a rotation re-seals the provider keys, so
a container that boots meanwhile still opens every one of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from infra.errors import BackendError

log = logging.getLogger("ocedge.secrets")

EDGE = "edge"
CONTAINER = "container"
DOCUMENTS = (EDGE, CONTAINER)
VERSION = 2
_BYTES = 32
_MIN_BYTES = 16


class SecretsError(BackendError):
    """A secrets document is not ours, or was damaged; the message never quotes it."""


def _new() -> bytes:
    return secrets.token_bytes(_BYTES)


def _hex(value: Any, what: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise SecretsError(f"{where} does not hold opencode-edge secrets ({what} is not hex): "
                           "it is not ours, or was edited") from None
    if len(raw) < _MIN_BYTES:
        raise SecretsError(f"{where} holds a {what} that is too short")
    return raw


def _load(text: str, where: str, kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("kind") != kind:
        raise SecretsError(f"{where} does not hold the {kind}'s opencode-edge secrets (a JSON "
                           f"document of version {VERSION}): it is not ours, or was edited")
    return doc


@dataclass(frozen=True)
class Peppers:
    """The API-key peppers by generation, and the oldest generation (``floor``) a
    stored hash may end at."""

    generations: dict[int, bytes] = field(repr=False)
    floor: int = 0

    @property
    def current(self) -> int:
        """The generation new keys are minted under and rotations wrap up to."""
        return max(self.generations)

    def __getitem__(self, generation: int) -> bytes:
        return self.generations[generation]

    def accepts(self, minted: int, upto: int) -> bool:
        """Whether a hash minted under ``minted`` and wrapped up to ``upto`` may be valid."""
        return (self.floor <= upto <= self.current and minted <= upto
                and all(g in self.generations for g in range(minted, upto + 1)))

    def rotated(self) -> Peppers:
        """One more generation, a fresh pepper; hashes ending at the old one still pass."""
        return replace(self, generations={**self.generations, self.current + 1: _new()})

    def settled(self, oldest_minted: int | None) -> Peppers:
        """Only hashes ending at the current generation pass; peppers older than any
        stored key's first one are dropped (nothing can need them)."""
        keep = self.current if oldest_minted is None else min(oldest_minted, self.current)
        return Peppers({g: p for g, p in self.generations.items() if g >= keep}, self.current)

    @classmethod
    def single(cls, pepper: bytes) -> Peppers:
        """One pepper, generation 0 (a pepper given as a setting, or tests)."""
        return cls({0: pepper})


@dataclass(frozen=True)
class EdgeSecrets:
    """The edge's secrets: the cookie-signing key and the API-key peppers."""

    session_secret: bytes = field(repr=False)
    peppers: Peppers

    @classmethod
    def generate(cls) -> EdgeSecrets:
        return cls(_new(), Peppers({0: _new()}))

    def rotated(self) -> EdgeSecrets:
        """A new cookie key (every cookie ends) and a new pepper generation."""
        return EdgeSecrets(_new(), self.peppers.rotated())

    def to_json(self) -> str:
        return json.dumps({
            "version": VERSION, "kind": EDGE, "session_secret": self.session_secret.hex(),
            "peppers": {str(g): p.hex() for g, p in sorted(self.peppers.generations.items())},
            "pepper_floor": self.peppers.floor})

    @classmethod
    def from_json(cls, text: str, where: str) -> EdgeSecrets:
        doc = _load(text, where, EDGE)
        raw = doc.get("peppers")
        if not isinstance(raw, dict) or not raw:
            raise SecretsError(f"{where} holds no API-key pepper")
        try:
            generations = {int(g): _hex(p, "pepper", where) for g, p in raw.items()}
            floor = int(doc.get("pepper_floor", 0))
        except (TypeError, ValueError):
            raise SecretsError(f"{where} holds pepper generations that are not numbers") from None
        if min(generations) < 0 or not min(generations) <= floor <= max(generations):
            raise SecretsError(f"{where} holds a pepper floor outside its generations")
        return cls(_hex(doc.get("session_secret"), "cookie key", where),
                   Peppers(generations, floor))


@dataclass(frozen=True)
class ContainerSecrets:
    """The container's secret: the sealing key, and during a rotation the keys it
    replaces (provider keys may still be sealed under one of them)."""

    sealing_key: bytes = field(repr=False)
    previous: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every key a stored value may be sealed under, the current one first."""
        return (self.sealing_key, *self.previous)

    @classmethod
    def generate(cls) -> ContainerSecrets:
        return cls(_new())

    def rotated(self) -> ContainerSecrets:
        """A new sealing key; the old one still opens until :meth:`settled`."""
        return ContainerSecrets(_new(), (self.sealing_key, *self.previous))

    def settled(self) -> ContainerSecrets:
        return ContainerSecrets(self.sealing_key)

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "kind": CONTAINER,
                           "sealing_key": self.sealing_key.hex(),
                           "previous_sealing_keys": [k.hex() for k in self.previous]})

    @classmethod
    def from_json(cls, text: str, where: str) -> ContainerSecrets:
        doc = _load(text, where, CONTAINER)
        previous = doc.get("previous_sealing_keys", [])
        if not isinstance(previous, list):
            raise SecretsError(f"{where} holds previous sealing keys that are not a list")
        return cls(_hex(doc.get("sealing_key"), "sealing key", where),
                   tuple(_hex(k, "previous sealing key", where) for k in previous))


def generate(name: str) -> str:
    """A new document ``name`` (``edge`` or ``container``), as stored."""
    return EdgeSecrets.generate().to_json() if name == EDGE else ContainerSecrets.generate().to_json()


class SecretSource(Protocol):
    """Where a deployment keeps its two secrets documents (``edge``, ``container``) as
    text: 0600 files locally, SSM SecureStrings on AWS."""

    def read(self, name: str) -> str | None:
        """Document ``name``, or None if it was never made."""

    def create(self, name: str, text: str) -> bool:
        """Store ``text`` as document ``name`` unless one exists (then nothing is
        written and the answer is False): whoever creates it first wins."""

    def replace(self, name: str, text: str) -> None:
        """Store ``text`` over the existing document (a rotation)."""

    def where(self, name: str) -> str:
        """The file or parameter that holds document ``name``, for messages."""


class ServerSecrets:
    """The secrets as one process holds them: each document is read (or, when asked,
    created) on first use and kept. The edge re-reads its own document after
    ``max_age`` (:meth:`fresh_edge`), so a rotation reaches every running edge.

    Secrets given as settings (``overrides``: ``pepper``, ``session_secret``) win over
    the document; a pepper given so is generation 0.
    """

    def __init__(self, source: SecretSource, overrides: dict[str, bytes] | None = None) -> None:
        self.source = source
        self.overrides = dict(overrides or {})
        self._edge: EdgeSecrets | None = None
        self._edge_read = 0.0
        self._container: ContainerSecrets | None = None
        self._lock = threading.Lock()

    def _document(self, name: str, create: bool) -> str | None:
        text = self.source.read(name)
        if text is None and create:
            self.source.create(name, generate(name))
            text = self.source.read(name)
        return text

    def _load_edge(self, create: bool) -> EdgeSecrets | None:
        text = self._document(EDGE, create)
        if text is None:
            return None
        found = EdgeSecrets.from_json(text, self.source.where(EDGE))
        if "session_secret" in self.overrides:
            found = replace(found, session_secret=self.overrides["session_secret"])
        if "pepper" in self.overrides:
            found = replace(found, peppers=Peppers.single(self.overrides["pepper"]))
        return found

    def edge(self, create: bool = True) -> EdgeSecrets | None:
        """The edge's secrets (made if missing, with ``create``)."""
        with self._lock:
            if self._edge is None:
                self._edge = self._load_edge(create)
                self._edge_read = time.monotonic()
            return self._edge

    def _reload_edge(self, max_age: float) -> EdgeSecrets:
        with self._lock:
            # Another request may have re-read it while this one waited for the lock.
            if self._edge is None or time.monotonic() - self._edge_read >= max_age:
                try:
                    self._edge = self._load_edge(create=self._edge is None) or self._edge
                except Exception as exc:  # keep serving with what we have; retry later
                    if self._edge is None:
                        raise
                    log.warning("could not re-read the edge's secrets (%s); using the ones "
                                "read before", type(exc).__name__)
                self._edge_read = time.monotonic()
            assert self._edge is not None
            return self._edge

    async def fresh_edge(self, max_age: float) -> EdgeSecrets:
        """The edge's secrets, re-read from the source (off the event loop) when the
        copy held is ``max_age`` seconds old or older."""
        held = self._edge
        if held is not None and time.monotonic() - self._edge_read < max_age:
            return held
        return await asyncio.to_thread(self._reload_edge, max_age)

    def container(self, create: bool = True) -> ContainerSecrets | None:
        """The container's secrets; without ``create`` None if they were never made (so
        nothing can have been sealed)."""
        with self._lock:
            if self._container is None:
                text = self._document(CONTAINER, create)
                if text is not None:
                    self._container = ContainerSecrets.from_json(
                        text, self.source.where(CONTAINER))
            return self._container

    def ensure(self) -> bool:
        """Create whichever document is missing; True if any was created now."""
        created = False
        for name in DOCUMENTS:
            if self.source.read(name) is None:
                created = self.source.create(name, generate(name)) or created
        return created

    def forget(self) -> None:
        """Drop what was read: the next use reads the source again."""
        with self._lock:
            self._edge = self._container = None
