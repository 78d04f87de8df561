"""Provider credentials (BYOK): model API keys sealed under the deployment's sealing key.

``ocedge provider set`` seals a key here and stores only the sealed bytes in the
key store; the container opens it at boot and hands it to opencode
(:mod:`container.providers`). Nothing else ever sees the key in the clear.

The sealing key is 32 random bytes in the container's secrets document
(:mod:`infra.secrets`): on AWS an SSM SecureString only the container and you can
read, locally ``<state dir>/container-secrets.json`` (0600).

Sealed form: one version byte, then a pynacl ``SecretBox`` message (random nonce,
XSalsa20-Poly1305) of ``{"provider": id, "key": key}``. The provider id inside is
checked on opening, so a sealed value copied onto another provider's record does
not open there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_VERSION = b"\x01"
# opencode's provider ids ("anthropic", "openai", "amazon-bedrock", a custom "fake"):
# also a safe URL path segment for PUT /auth/{providerID}.
_PROVIDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_KEY_LENGTH = 16 * 1024


class ProviderKeyError(ValueError):
    """A provider id or key cannot be used, or a sealed key does not open.

    Messages name the provider, never the key.
    """


def check_provider_id(provider: str) -> str:
    if not _PROVIDER_ID.match(provider):
        raise ProviderKeyError(
            f"invalid provider id {provider!r}: use opencode's id for it, e.g. anthropic, "
            "openai (letters, digits, '.', '_' and '-')")
    return provider


def check_api_key(provider: str, key: str) -> str:
    key = key.strip()
    if not key:
        raise ProviderKeyError(f"the key for {provider} is empty")
    if len(key) > _MAX_KEY_LENGTH or any(ord(c) < 32 for c in key):
        raise ProviderKeyError(f"the key for {provider} is not a single line of text")
    return key


def seal(sealing_key: bytes, provider: str, key: str) -> bytes:
    """Seal ``key`` for ``provider``; only :func:`open_sealed` with the same sealing key opens it."""
    from nacl.secret import SecretBox

    check_provider_id(provider)
    plain = json.dumps({"provider": provider, "key": check_api_key(provider, key)}).encode()
    return _VERSION + bytes(SecretBox(sealing_key).encrypt(plain))


def open_sealed(sealing_key: bytes | Sequence[bytes], provider: str, sealed: bytes) -> str:
    """The key sealed for ``provider``, under ``sealing_key`` (or any of several: while
    a rotation re-seals, the old key still opens); ProviderKeyError if it does not open."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    if not sealed.startswith(_VERSION):
        raise ProviderKeyError(f"the stored key for {provider} is in an unknown format; "
                               f"set it again with `ocedge provider set {provider}`")
    doc = None
    for key in [sealing_key] if isinstance(sealing_key, bytes) else sealing_key:
        try:
            doc = json.loads(SecretBox(key).decrypt(sealed[len(_VERSION):]))
            break
        except (CryptoError, ValueError):
            continue
    if doc is None:
        raise ProviderKeyError(
            f"the stored key for {provider} does not open with this deployment's sealing "
            f"key (was the key sealed for another deployment?); set it again with "
            f"`ocedge provider set {provider}`")
    if not isinstance(doc, dict) or doc.get("provider") != provider \
            or not isinstance(doc.get("key"), str):
        raise ProviderKeyError(f"the stored key for {provider} was sealed for another provider")
    return str(doc["key"])
