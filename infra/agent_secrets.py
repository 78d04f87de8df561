"""Agent secrets: credentials for the agent's own tools (a GitHub token, an MCP server's
API key…), kept as carefully as the model provider keys (:mod:`infra.providers`).

``ocedge secret set NAME`` seals the value here under the deployment's sealing key and
stores only the sealed bytes in the key store; the container opens them at boot and
hands them to opencode's environment (:mod:`container.agent_secrets`), so the agent's
shell, its tools and its MCP servers see ``$NAME`` and opencode's config can name it
(``{env:NAME}``). Nothing else sees a value in the clear: never a log line, the image,
the bucket or an error message.

A name is an environment variable's (letters, digits and ``_``, not starting with a
digit), and not one the container or opencode relies on: PATH, HOME, the ``OCEDGE_``,
``OPENCODE_``, ``AWS_`` and ``XDG_`` families, the loader's and git's configuration
variables and the like (:data:`RESERVED`) — a secret must not change how the container
itself runs.

Sealed form: one version byte (``\\x02``, so it never opens as a provider key), then a
pynacl ``SecretBox`` message of ``{"secret": name, "value": value}``; the name inside is
checked on opening, so a sealed value copied onto another name does not open there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

_VERSION = b"\x02"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_VALUE = 32 * 1024
# Names the container sets or relies on, exactly (compared upper-case)...
RESERVED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "PWD", "OLDPWD", "SHLVL", "IFS",
    "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOSTNAME", "MAIL", "ENV", "BASH_ENV", "CDPATH",
    "PS1", "PS2", "PS4", "PROMPT_COMMAND", "NODE_OPTIONS", "NODE_PATH", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "GIT_ASKPASS",
    "GIT_TERMINAL_PROMPT", "SSH_ASKPASS", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
})
# ... and by prefix.
RESERVED_PREFIXES = ("OCEDGE_", "OPENCODE_", "AWS_", "XDG_", "LC_", "LD_", "DYLD_", "BUN_",
                     "NPM_CONFIG_", "GIT_CONFIG", "BASH_FUNC_")


@dataclass(frozen=True)
class AgentSecret:
    """An agent secret as stored: its name, the sealed value, when it was first set and
    last changed."""

    name: str
    sealed: bytes = field(repr=False)
    created: float
    updated: float


class AgentSecretStore(Protocol):
    """The key store's part for agent secrets (every :class:`infra.interfaces.KeyStore`
    is one): sealed values by name, like the provider credentials."""

    async def put_secret(self, name: str, sealed: bytes, when: float) -> None:
        """Store (or replace) the sealed secret ``name``; ``created`` stays the first time."""

    async def list_secrets(self) -> list[AgentSecret]:
        """Every stored secret, by name."""

    async def remove_secret(self, name: str) -> bool:
        """Delete the secret ``name``; False if there was none."""

    async def reseal_secret(self, name: str, expected: bytes, sealed: bytes) -> bool:
        """Replace ``name``'s sealed value if it is still ``expected`` (a rotation re-seals
        it); False if it was removed or set anew meanwhile."""


# Items of the container's own in the same store (sealed the same way), never handed to
# the agent nor listed as its secrets: OCEDGE_NOTIFY_WEBHOOK (infra/cli/notify.py).
CONTAINER_OWN = "OCEDGE_"


class AgentSecretError(ValueError):
    """A name or value cannot be used, or a sealed value does not open. Messages name
    the secret, never its value."""


def check_name(name: str) -> str:
    """``name`` if it can be an agent secret's; AgentSecretError saying why not."""
    if not _NAME.fullmatch(name):
        raise AgentSecretError(
            f"invalid secret name {name[:64]!r}: use an environment variable's name, like "
            "GITHUB_TOKEN (letters, digits and '_', not starting with a digit)")
    upper = name.upper()
    if upper in RESERVED or upper.startswith(RESERVED_PREFIXES):
        raise AgentSecretError(
            f"{name} is a name the container or opencode relies on and cannot be a secret "
            f"(reserved: {', '.join(p + '*' for p in RESERVED_PREFIXES)}, PATH, HOME, …): "
            "choose another name")
    return name


def check_value(name: str, value: str) -> str:
    """The value to store: one trailing newline (from ``echo`` or a file) dropped."""
    if value.endswith("\n"):
        value = value[:-2] if value.endswith("\r\n") else value[:-1]
    if not value:
        raise AgentSecretError(f"the value for {name} is empty (it is read from stdin)")
    if len(value.encode()) > MAX_VALUE:
        raise AgentSecretError(f"the value for {name} is longer than {MAX_VALUE // 1024} KiB")
    if "\x00" in value:
        raise AgentSecretError(f"the value for {name} contains a NUL byte, which no "
                               "environment variable can hold")
    return value


def seal(sealing_key: bytes, name: str, value: str) -> bytes:
    """Seal ``value`` for ``name``; only :func:`open_sealed` with the same key opens it.
    (A name of the container's own, :data:`CONTAINER_OWN`, is sealed the same way.)"""
    from nacl.secret import SecretBox

    if not name.startswith(CONTAINER_OWN):
        check_name(name)
    plain = json.dumps({"secret": name, "value": check_value(name, value)})
    return _VERSION + bytes(SecretBox(sealing_key).encrypt(plain.encode()))


def open_sealed(sealing_keys: bytes | Sequence[bytes], name: str, sealed: bytes) -> str:
    """The value sealed for ``name`` under any of ``sealing_keys`` (while a rotation
    re-seals, the old key still opens); AgentSecretError if it does not open."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    if not sealed.startswith(_VERSION):
        raise AgentSecretError(f"the stored secret {name} is in an unknown format; set it "
                               f"again with `ocedge secret set {name}`")
    keys = [sealing_keys] if isinstance(sealing_keys, bytes) else list(sealing_keys)
    for key in keys:
        try:
            doc = json.loads(SecretBox(key).decrypt(sealed[len(_VERSION):]))
        except (CryptoError, ValueError):
            continue
        if not isinstance(doc, dict) or doc.get("secret") != name \
                or not isinstance(doc.get("value"), str):
            raise AgentSecretError(f"the stored secret {name} was sealed for another name")
        return str(doc["value"])
    raise AgentSecretError(
        f"the stored secret {name} does not open with this deployment's sealing key (was it "
        f"sealed for another deployment?); set it again with `ocedge secret set {name}`")


async def reseal_all(store: AgentSecretStore, old_keys: Sequence[bytes],
                     new_key: bytes) -> tuple[list[str], list[str]]:
    """Seal every stored secret again under ``new_key`` (a rotation of the sealing key);
    the names re-sealed, and the names that did not open with ``old_keys``."""
    resealed: list[str] = []
    unopenable: list[str] = []
    for record in await store.list_secrets():
        for _ in range(2):  # once more if it was set anew meanwhile
            try:
                plain = open_sealed(old_keys, record.name, record.sealed)
            except AgentSecretError:
                unopenable.append(record.name)
                break
            if await store.reseal_secret(record.name, record.sealed,
                                         seal(new_key, record.name, plain)):
                resealed.append(record.name)
                break
            fresh = [r for r in await store.list_secrets() if r.name == record.name]
            if not fresh:
                break
            record = fresh[0]
    return resealed, unopenable
