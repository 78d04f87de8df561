"""`ocedge admin rotate-secrets`: both secrets documents replaced, and everything they
protect carried over — API keys re-peppered (a stolen old pepper mints nothing), the
admin's 2FA secret and the provider keys sealed again, every browser session ended.

The in-process tests run the rotation on the local backends; the CLI runs it locally
and against a stack in moto, with an edge running that must follow it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra import totp
from infra.backends import backends_for_tools
from infra.credentials import check_api_key, hash_generations, mint_api_key, repepper
from infra.interfaces import ApiKeyRecord, Backends
from infra.providers import ProviderKeyError, open_sealed, seal
from infra.rotation import RotationError, rotate_secrets
from infra.secrets import CONTAINER, Peppers
from tests.support import cli
from tests.support.aws import (
    CONTAINER_SECRETS_PARAMETER,
    FAKE_CREDENTIALS,
    REGION,
    SECRETS_PARAMETER,
    MotoServer,
    aws_credentials,
    aws_settings,
    create_stack,
    moto,
    moto_server,
)
from tests.support.edge import ADMIN_PASSWORD, make_settings, running_edge
from tests.support.login import login_cookie

__all__ = ["aws_credentials", "moto", "moto_server"]  # fixtures

NOW = 1_800_000_000.0


def backends(state_dir: Path, **overrides: Any) -> Backends:
    """A fresh process's view of the local deployment (nothing cached)."""
    return backends_for_tools(make_settings(state_dir, **overrides))


def verifies(state_dir: Path, key: str) -> bool:
    key_id, secret = key.split("_")[1:]
    fresh = backends(state_dir)
    record = asyncio.run(fresh.keys.get_key(key_id))
    return check_api_key(secret, record, fresh.pepper, NOW)


def store_key(b: Backends, name: str, pepper: bytes | Peppers) -> str:
    new = mint_api_key(name, pepper, now=NOW - 10)
    asyncio.run(b.keys.put_key(new.record))
    return new.key


# -- re-peppering ----------------------------------------------------------------------


@pytest.mark.unit
def test_a_repeppered_key_keeps_working_and_the_old_pepper_mints_nothing() -> None:
    old = Peppers.single(b"p" * 32)
    key = mint_api_key("k", old, now=NOW)
    secret = key.key.split("_")[2]
    rotated = old.rotated()
    wrapped = repepper(key.record.secret_hash, rotated)
    assert wrapped is not None and wrapped != key.record.secret_hash
    assert hash_generations(wrapped) == (0, 1)
    moved = ApiKeyRecord(key.record.id, "k", wrapped, NOW)
    # While the rotation runs both pass; once it settles only the new one does.
    assert check_api_key(secret, key.record, rotated, NOW)
    assert check_api_key(secret, moved, rotated, NOW)
    settled = rotated.settled(oldest_minted=0)
    assert check_api_key(secret, moved, settled, NOW)
    assert not check_api_key(secret, key.record, settled, NOW)
    assert not check_api_key("x" * 43, moved, settled, NOW)
    # Whoever kept the old pepper can make a record that passed before; not any more.
    forged = mint_api_key("forged", old, now=NOW)
    assert not check_api_key(forged.key.split("_")[2], forged.record, settled, NOW)
    # Keys minted now carry the new generation and need no old pepper.
    fresh = mint_api_key("new", settled, now=NOW)
    assert hash_generations(fresh.record.secret_hash) == (1, 1)
    assert check_api_key(fresh.key.split("_")[2], fresh.record,
                         Peppers({1: settled[1]}, 1), NOW)
    assert repepper(b"not a hash", settled) is None
    assert repepper(wrapped, settled) == wrapped  # already there


# -- the rotation, in process ----------------------------------------------------------


@pytest.mark.unit
def test_rotation_replaces_both_documents_and_carries_everything_over(state_dir: Path) -> None:
    before = backends(state_dir)
    old_edge = before.edge_secrets
    old_sealing = before.sealing_key()
    assert old_sealing is not None
    legacy = store_key(before, "legacy", old_edge.peppers)
    other = store_key(before, "other", old_edge.peppers)
    asyncio.run(before.keys.put_key(ApiKeyRecord("broken00000", "broken", b"junk", NOW)))
    asyncio.run(before.keys.put_provider("openai", seal(old_sealing, "openai", "sk-kept"), NOW))
    asyncio.run(before.keys.put_provider("stale", seal(bytes(32), "stale", "sk-x"), NOW))
    secret = totp.new_secret()
    asyncio.run(before.keys.set_totp(totp.seal_secret(old_edge.session_secret, secret)))
    epoch = asyncio.run(before.keys.session_epoch())

    done = asyncio.run(rotate_secrets(backends(state_dir), wait=0))

    after = backends(state_dir)
    new_edge = after.edge_secrets
    assert new_edge.session_secret != old_edge.session_secret
    assert new_edge.peppers.current == 1 and new_edge.peppers.floor == 1
    assert sorted(done.repeppered) == sorted(k.split("_")[1] for k in (legacy, other))
    assert done.unusable == ["broken00000"]
    assert verifies(state_dir, legacy) and verifies(state_dir, other)
    # A record made with the old pepper alone (as a thief of it would) passes nowhere.
    forged = mint_api_key("forged", old_edge.peppers, now=NOW)
    assert not check_api_key(forged.key.split("_")[2], forged.record, new_edge.peppers, NOW)
    assert asyncio.run(after.keys.session_epoch()) == epoch + 1 == done.session_epoch
    sealed_totp = asyncio.run(after.keys.get_totp())
    assert sealed_totp is not None and done.totp == "re-sealed"
    assert totp.open_secret(new_edge.session_secret, sealed_totp) == secret
    with pytest.raises(totp.TotpError):
        totp.open_secret(old_edge.session_secret, sealed_totp)
    assert after.sealing_keys() == (after.sealing_key(),) != (old_sealing,)
    stored = asyncio.run(after.keys.get_provider("openai"))
    assert stored is not None and done.resealed == ["openai"] and done.unopenable == ["stale"]
    assert open_sealed(after.sealing_keys(), "openai", stored.sealed) == "sk-kept"
    with pytest.raises(ProviderKeyError):
        open_sealed(old_sealing, "openai", stored.sealed)
    # A second rotation moves on again; the keys still need no one to re-enter them.
    again = asyncio.run(rotate_secrets(backends(state_dir), wait=0))
    assert again.pepper_generation == 2 and verifies(state_dir, legacy)


@pytest.mark.unit
def test_an_interrupted_rotation_breaks_nothing_and_a_rerun_finishes(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = backends(state_dir)
    keys = [store_key(before, f"k{i}", before.pepper) for i in range(3)]
    sealing = before.sealing_key()
    assert sealing is not None
    asyncio.run(before.keys.put_provider("openai", seal(sealing, "openai", "sk-1"), NOW))

    interrupted = backends(state_dir)
    calls = {"rehash": 0}
    rehash = interrupted.keys.rehash_key

    async def dies_on_the_second(key_id: str, expected: bytes, new: bytes) -> bool:
        calls["rehash"] += 1
        if calls["rehash"] == 2:
            raise OSError("the disk went away")
        return await rehash(key_id, expected, new)

    monkeypatch.setattr(interrupted.keys, "rehash_key", dies_on_the_second)
    with pytest.raises(OSError):
        asyncio.run(rotate_secrets(interrupted, wait=0))
    # Half re-peppered: every key works all the same (the floor has not moved).
    assert all(verifies(state_dir, key) for key in keys)
    monkeypatch.undo()

    # A container that boots while provider keys are being sealed again still opens
    # them: the old sealing key stays beside the new one until every one is done.
    midway = backends(state_dir)
    current = midway.secrets.container()
    assert current is not None
    midway.secrets.source.replace(CONTAINER, current.rotated().to_json())
    stored = asyncio.run(midway.keys.get_provider("openai"))
    assert stored is not None
    assert open_sealed(backends(state_dir).sealing_keys(), "openai", stored.sealed) == "sk-1"

    done = asyncio.run(rotate_secrets(backends(state_dir), wait=0))
    assert len(done.repeppered) == 3 and not done.unusable
    final = backends(state_dir)
    assert final.pepper.floor == final.pepper.current == 2
    assert all(verifies(state_dir, key) for key in keys)
    stored = asyncio.run(final.keys.get_provider("openai"))
    assert stored is not None and len(final.sealing_keys()) == 1
    assert open_sealed(final.sealing_keys(), "openai", stored.sealed) == "sk-1"


@pytest.mark.unit
def test_revoking_every_api_key_instead(state_dir: Path) -> None:
    before = backends(state_dir)
    key = store_key(before, "k", before.pepper)
    done = asyncio.run(rotate_secrets(backends(state_dir), wait=0, revoke_api_keys=True))
    assert done.revoked == [key.split("_")[1]] and not done.repeppered
    assert not verifies(state_dir, key)


@pytest.mark.unit
def test_secrets_given_as_settings_are_not_rotated_behind_your_back(state_dir: Path) -> None:
    with pytest.raises(RotationError, match="OCEDGE_PEPPER"):
        asyncio.run(rotate_secrets(backends(state_dir, pepper="a" * 32), wait=0))


@pytest.mark.unit
def test_a_state_directory_from_before_the_split_keeps_every_secret(state_dir: Path) -> None:
    pepper, session, sealing = b"P" * 32, b"S" * 32, b"K" * 32
    for name, value in (("pepper.key", pepper), ("session.key", session),
                        ("sealing.key", sealing)):
        (state_dir / name).write_bytes(value)
    found = backends(state_dir)
    assert found.pepper[0] == pepper and found.session_secret == session
    assert found.sealing_key(create=False) == sealing
    assert not list(state_dir.glob("*.key"))
    for name in ("edge-secrets.json", "container-secrets.json"):
        assert (state_dir / name).stat().st_mode & 0o777 == 0o600


# -- the command, locally and on a stack, with an edge that follows it ------------------


def test_rotate_secrets_locally_ends_sessions_and_keeps_keys(state_dir: Path) -> None:
    settings = make_settings(state_dir)
    with running_edge(settings) as edge:
        key = edge.create_key("client")
        cookie = login_cookie(edge.url, "admin", ADMIN_PASSWORD)
        with httpx.Client(base_url=edge.url, trust_env=False, timeout=30) as client:
            assert client.get("/_edge/status", headers={"Cookie": cookie}).status_code == 200
            result = cli.ocedge("admin", "rotate-secrets", "--state-dir", str(state_dir),
                                env={"HOME": str(state_dir / "home"),
                                     "OCEDGE_KEY_CACHE_TTL": "0"})
            assert result.returncode == 0, result.stderr
            assert "every browser session has ended" in result.stdout
            assert key.split("_")[1] in result.stdout and key not in result.stdout
            assert client.get("/_edge/status", headers={"Cookie": cookie}).status_code == 401
            assert client.get("/_edge/status", headers={
                "Authorization": f"Bearer {key}"}).status_code == 200
            fresh = login_cookie(edge.url, "admin", ADMIN_PASSWORD)
            assert client.get("/_edge/status", headers={"Cookie": fresh}).status_code == 200


def test_rotate_secrets_on_a_stack(moto: MotoServer) -> None:
    deployment = create_stack(moto.client("cloudformation"), moto.client("ec2"))
    env = {**FAKE_CREDENTIALS, "OCEDGE_AWS_ENDPOINT": moto.url, "OCEDGE_AWS_REGION": REGION,
           "OCEDGE_KEY_CACHE_TTL": "0"}
    init = cli.ocedge("init", "--stack", deployment.stack, "--json",
                      stdin=ADMIN_PASSWORD + "\n", env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    key = json.loads(init.stdout)["api_key"]["key"]
    provider = cli.ocedge("provider", "set", "openai", "--stack", deployment.stack,
                          stdin="sk-on-aws\n", env=env, timeout=120)
    assert provider.returncode == 0, provider.stderr
    ssm = moto.client("ssm")

    def parameter(name: str) -> str:
        return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])

    before = {name: parameter(name) for name in (SECRETS_PARAMETER, CONTAINER_SECRETS_PARAMETER)}
    with running_edge(aws_settings(moto.url, deployment)) as edge:
        cookie = login_cookie(edge.url, "admin", ADMIN_PASSWORD)
        with httpx.Client(base_url=edge.url, trust_env=False, timeout=30) as client:
            assert client.get("/_edge/status", headers={"Cookie": cookie}).status_code == 200
            rotated = cli.ocedge("admin", "rotate-secrets", "--stack", deployment.stack,
                                 "--json", env=env, timeout=120)
            assert rotated.returncode == 0, rotated.stderr
            report = json.loads(rotated.stdout)
            assert report["api_keys"]["repeppered"] == [key.split("_")[1]]
            assert report["providers"]["resealed"] == ["openai"]
            assert client.get("/_edge/status", headers={"Cookie": cookie}).status_code == 401
            assert client.get("/_edge/status", headers={
                "Authorization": f"Bearer {key}"}).status_code == 200
        edge.run(edge.edge.backends.aclose())
    after = {name: parameter(name) for name in before}
    assert all(after[name] != before[name] for name in before)
    # What the container will find at its next start: the key opens with its own
    # parameter alone, as the instance role reads it.
    container = backends_for_tools(aws_settings(
        moto.url, deployment, secrets_parameter=None, keys_table=deployment.keys_table))
    stored = asyncio.run(container.keys.get_provider("openai"))
    assert stored is not None
    assert open_sealed(container.sealing_keys(), "openai", stored.sealed) == "sk-on-aws"
