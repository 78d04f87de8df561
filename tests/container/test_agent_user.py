"""Who opencode runs as (container/agent.py): the agent's user from OCEDGE_AGENT_USER,
refused rather than run unisolated, and the environment it gets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from container.agent import AgentUser, AgentUserError, agent_user
from container.opencode import opencode_environment
from infra.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_without_a_setting_opencode_runs_as_the_container_itself() -> None:
    assert agent_user(Settings(), euid=1000) is None
    assert agent_user(Settings(), euid=0) is None  # with a warning in the log


def test_a_bare_uid_needs_no_entry_in_passwd() -> None:
    found = agent_user(Settings(agent_user="64999:64998"), euid=0)
    assert found == AgentUser(64999, 64998, None) and found.groups == []
    assert agent_user(Settings(agent_user="64999"), euid=0) == AgentUser(64999, 64999, None)


def test_a_named_user_is_looked_up_and_one_that_does_not_exist_is_refused() -> None:
    assert agent_user(Settings(agent_user="nobody"), euid=0) is not None
    with pytest.raises(AgentUserError, match="no such user"):
        agent_user(Settings(agent_user="no-such-ocedge-user"), euid=0)


def test_a_container_that_is_not_root_refuses_rather_than_runs_the_agent_as_itself() -> None:
    with pytest.raises(AgentUserError, match="needs the container to run as root"):
        agent_user(Settings(agent_user="10002"), euid=1000)


@pytest.mark.parametrize("value", ["root", "0", "0:0", "-x", "a b", "10002:"])
def test_the_agent_is_never_root_and_always_a_plain_name(value: str) -> None:
    with pytest.raises(SettingsError, match="OCEDGE_AGENT_USER"):
        Settings(agent_user=value)


def test_the_agents_environment_has_its_own_home_and_no_aws_access(tmp_path: Path) -> None:
    # The current user stands in for the agent: handing it a directory needs no root.
    agent = AgentUser(os.getuid(), os.getgid(), "agent-probe")
    base = {"PATH": "/usr/bin:/bin", "HOME": "/root", "AWS_ACCESS_KEY_ID": "AKIA0",
            "AWS_SECRET_ACCESS_KEY": "s", "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/c",
            "LANG": "C.UTF-8"}
    env = opencode_environment({"OPENCODE_X": "1"}, base, tmp_path / "data", agent)
    assert not [name for name in env if name.startswith("AWS_")]
    assert env["HOME"] == str(tmp_path / "data" / "home") != base["HOME"]
    assert env["USER"] == env["LOGNAME"] == "agent-probe"
    assert env["OPENCODE_X"] == "1" and env["LANG"] == "C.UTF-8"
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        assert Path(env[name]).is_dir() and Path(env[name]).stat().st_uid == agent.uid
    # Without an agent user (local mode) HOME stays what the container was given.
    assert opencode_environment({}, base, tmp_path / "local")["HOME"] == "/root"
