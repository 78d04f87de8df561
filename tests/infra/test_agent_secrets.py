"""Agent secrets: names that cannot disturb the container, values sealed like the
provider keys, the same behaviour in the SQLite, DynamoDB (moto) and in-memory stores,
carried over by a rotation, the `ocedge secret` commands, and git's credential helper.

The real container (S3 workspace, opencode's shell, a git push over HTTP) is in
tests/container/test_agent_secrets.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from container.agent_secrets import HELPER, agent_environment, git_credentials
from infra.agent_secrets import AgentSecretError, check_name, check_value, open_sealed, seal
from infra.aws.client import Boto3Api
from infra.aws.keys import DynamoDBKeyStore
from infra.backends import backends_for_tools
from infra.local.db import Database
from infra.local.keys import LocalKeyStore
from infra.providers import seal as seal_provider
from infra.rotation import rotate_secrets
from infra.settings import Settings
from tests.support import cli
from tests.support.aws import KEYS_TABLE, REGION, aws_credentials, create_tables
from tests.support.memory import MemoryKeyStore

__all__ = ["aws_credentials"]  # fixture

KEY = bytes(range(32))
VALUE = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"


# -- names and values ----------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "GH_TOKEN", "_private", "mcp_key_2",
                                  "ANTHROPIC_API_KEY"])
def test_environment_variable_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.unit
@pytest.mark.parametrize("name", ["", "1TOKEN", "MY-TOKEN", "MY TOKEN", "A=B", "TOKEN\n",
                                  "é", "X" * 129])
def test_names_that_are_not_environment_variables_are_refused(name: str) -> None:
    with pytest.raises(AgentSecretError, match="invalid secret name"):
        check_name(name)


@pytest.mark.unit
@pytest.mark.parametrize("name", [
    "PATH", "HOME", "path", "SHELL", "TMPDIR", "NODE_OPTIONS", "OCEDGE_STATE_DIR",
    "OPENCODE_SERVER_PASSWORD", "opencode_config_content", "AWS_SECRET_ACCESS_KEY",
    "XDG_DATA_HOME", "LD_PRELOAD", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "npm_config_offline",
    "LC_ALL", "BASH_ENV", "HTTPS_PROXY"])
def test_names_the_container_relies_on_are_refused(name: str) -> None:
    with pytest.raises(AgentSecretError, match="relies on"):
        check_name(name)


@pytest.mark.unit
def test_values_keep_their_lines_but_lose_one_trailing_newline() -> None:
    assert check_value("K", VALUE + "\n") == VALUE
    assert check_value("K", "line 1\nline 2\n\n") == "line 1\nline 2\n"
    assert check_value("K", "windows\r\n") == "windows"
    for bad, why in [("", "empty"), ("\n", "empty"), ("a\x00b", "NUL"),
                     ("x" * (33 * 1024), "longer")]:
        with pytest.raises(AgentSecretError, match=why) as refused:
            check_value("K", bad)
        assert bad.strip() == "" or bad not in str(refused.value)


@pytest.mark.unit
def test_a_sealed_secret_opens_only_with_its_key_and_name() -> None:
    sealed = seal(KEY, "GITHUB_TOKEN", VALUE)
    assert VALUE.encode() not in sealed and seal(KEY, "GITHUB_TOKEN", VALUE) != sealed
    assert open_sealed(KEY, "GITHUB_TOKEN", sealed) == VALUE
    assert open_sealed([bytes(32), KEY], "GITHUB_TOKEN", sealed) == VALUE  # mid-rotation
    with pytest.raises(AgentSecretError, match="does not open") as refused:
        open_sealed(bytes(32), "GITHUB_TOKEN", sealed)
    assert VALUE not in str(refused.value)
    with pytest.raises(AgentSecretError, match="sealed for another name"):
        open_sealed(KEY, "GH_TOKEN", sealed)
    with pytest.raises(AgentSecretError, match="does not open"):
        open_sealed(KEY, "GITHUB_TOKEN", sealed[:-1] + bytes([sealed[-1] ^ 1]))
    # A provider key's sealed value is not a secret's, even under the same key.
    with pytest.raises(AgentSecretError, match="unknown format"):
        open_sealed(KEY, "openai", seal_provider(KEY, "openai", VALUE))


# -- the stores ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "dynamodb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        yield LocalKeyStore(Database(tmp_path / "ocedge.db"))
    elif request.param == "memory":
        yield MemoryKeyStore()
    else:
        request.getfixturevalue("aws_credentials")
        with mock_aws():
            create_tables(boto3.client("dynamodb", region_name=REGION))
            yield DynamoDBKeyStore(Boto3Api(REGION, None), KEYS_TABLE)


@pytest.mark.unit
def test_every_store_keeps_secrets_by_name_with_their_dates(store: Any) -> None:
    async def scenario() -> None:
        assert await store.list_secrets() == []
        await store.put_secret("GITHUB_TOKEN", b"sealed-1", 100.0)
        await store.put_secret("API_KEY", b"sealed-a", 150.0)
        await store.put_secret("GITHUB_TOKEN", b"sealed-2", 200.0)
        listed = await store.list_secrets()
        assert [(s.name, s.sealed, s.created, s.updated) for s in listed] == [
            ("API_KEY", b"sealed-a", 150.0, 150.0), ("GITHUB_TOKEN", b"sealed-2", 100.0, 200.0)]
        assert "sealed-2" not in repr(listed)
        # A re-seal lands only on the value it read.
        assert not await store.reseal_secret("GITHUB_TOKEN", b"sealed-1", b"sealed-3")
        assert await store.reseal_secret("GITHUB_TOKEN", b"sealed-2", b"sealed-3")
        assert not await store.reseal_secret("NOPE", b"x", b"y")
        assert await store.remove_secret("GITHUB_TOKEN")
        assert not await store.remove_secret("GITHUB_TOKEN")
        assert [s.name for s in await store.list_secrets()] == ["API_KEY"]

    asyncio.run(scenario())


@pytest.mark.unit
def test_a_rotation_seals_every_secret_again_under_the_new_key(tmp_path: Path) -> None:
    backends = backends_for_tools(Settings(state_dir=tmp_path))

    async def scenario() -> None:
        old = backends.sealing_key(create=True)
        assert old is not None
        await backends.keys.put_secret("GITHUB_TOKEN", seal(old, "GITHUB_TOKEN", VALUE), 1.0)
        await backends.keys.put_secret("BROKEN", b"\x02not-sealed-here", 1.0)
        done = await rotate_secrets(backends, wait=0)
        assert done.secrets_resealed == ["GITHUB_TOKEN"] and done.secrets_unopenable == ["BROKEN"]
        new = backends.sealing_keys()
        assert new and old not in new
        [stored] = [s for s in await backends.keys.list_secrets() if s.name == "GITHUB_TOKEN"]
        assert open_sealed(new, "GITHUB_TOKEN", stored.sealed) == VALUE

    asyncio.run(scenario())


# -- the container's side: the environment and git's helper ------------------------------


@pytest.mark.unit
def test_the_agent_environment_has_every_secret_and_the_helper_only_with_a_token(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(state_dir=tmp_path, git_token_hosts="https://git.example.com/")
    backends = backends_for_tools(settings)

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        assert await agent_environment(settings, backends) == {}
        key = backends.sealing_key(create=True)
        assert key is not None
        await backends.keys.put_secret("MCP_KEY", seal(key, "MCP_KEY", "mcp-value"), 1.0)
        # Stored by an older version, before its name was reserved: left out at boot.
        await backends.keys.put_secret("LD_PRELOAD", b"\x02x", 1.0)
        without = await agent_environment(settings, backends)
        await backends.keys.put_secret("GH_TOKEN", seal(key, "GH_TOKEN", VALUE), 1.0)
        return without, await agent_environment(settings, backends)

    without, env = asyncio.run(scenario())
    assert without == {"MCP_KEY": "mcp-value"}
    assert env == {"MCP_KEY": "mcp-value", "GH_TOKEN": VALUE, "GIT_CONFIG_COUNT": "2",
                   "GIT_CONFIG_KEY_0": "credential.https://github.com.helper",
                   "GIT_CONFIG_VALUE_0": HELPER,
                   "GIT_CONFIG_KEY_1": "credential.https://git.example.com.helper",
                   "GIT_CONFIG_VALUE_1": HELPER}
    assert VALUE not in HELPER and "mcp-value" not in caplog.text and VALUE not in caplog.text
    assert "LD_PRELOAD" in caplog.text  # said by name why it was left out


def test_git_asks_the_helper_and_gets_the_token_for_github_only(tmp_path: Path) -> None:
    env = {"PATH": os.defpath, "HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0",
           "GITHUB_TOKEN": VALUE, **git_credentials(Settings(), {"GITHUB_TOKEN": VALUE})}

    def fill(url: str) -> str:
        done = subprocess.run(["git", "credential", "fill"], input=f"url={url}\n\n", env=env,
                              capture_output=True, text=True, check=False)
        return done.stdout

    assert f"username=x-access-token\npassword={VALUE}\n" in fill("https://github.com/o/r.git")
    assert "password=" not in fill("https://gitlab.com/o/r.git")
    assert "password=" not in fill("http://github.com/o/r.git")  # never over plain HTTP
    # No file was written for it: the token lives in the environment only.
    assert list(tmp_path.iterdir()) == []


# -- ocedge secret ---------------------------------------------------------------------------


def test_secret_set_list_remove_never_show_the_value(tmp_path: Path) -> None:
    def run(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return cli.ocedge("secret", *argv, "--state-dir", str(tmp_path), stdin=stdin)

    stored = run("set", "GITHUB_TOKEN", stdin=VALUE + "\n")
    assert stored.returncode == 0, stored.stderr
    assert "Stored the secret GITHUB_TOKEN (sealed)" in stored.stdout
    multi = run("set", "SSH_KEY", "--json", stdin="-----BEGIN-----\nabc\n-----END-----\n")
    assert json.loads(multi.stdout) == {"name": "SSH_KEY", "stored": True,
                                        "applies": "next start"}
    listed = run("list", "--json")
    assert [row["name"] for row in json.loads(listed.stdout)] == ["GITHUB_TOKEN", "SSH_KEY"]
    table = run("list")
    assert "GITHUB_TOKEN" in table.stdout and "SSH_KEY" in table.stdout
    refused = run("set", "OPENCODE_SERVER_PASSWORD", stdin=VALUE)
    assert refused.returncode == 2 and "relies on" in refused.stderr
    assert "Traceback" not in refused.stderr
    empty = run("set", "EMPTY", stdin="")
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert run("remove", "GITHUB_TOKEN").returncode == 0
    missing = run("remove", "GITHUB_TOKEN")
    assert missing.returncode == 2 and "no secret named 'GITHUB_TOKEN'" in missing.stderr
    everything = "".join(r.stdout + r.stderr for r in (stored, multi, listed, table, refused))
    assert VALUE not in everything and "abc" not in everything
    backends = backends_for_tools(Settings(state_dir=tmp_path))
    [ssh] = asyncio.run(backends.keys.list_secrets())
    assert open_sealed(backends.sealing_keys(), "SSH_KEY", ssh.sealed) == \
        "-----BEGIN-----\nabc\n-----END-----"
