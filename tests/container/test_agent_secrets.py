"""Agent secrets in the real container on an S3 workspace (moto, a real FUSE mount, the
real opencode): set with the CLI, seen by a command the agent runs through opencode's
shell endpoint — compared by hash, never printed — and by git, whose push to a server
with Basic auth goes through the helper the container configured; and afterwards in no
log line, no file of the container's and no object of the bucket.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.settings import Settings
from tests.container.test_workspace import PREFIX, restore_replica, s3_settings
from tests.support.cli import ocedge
from tests.support.container import container
from tests.support.fake_model import FakeModelServer
from tests.support.git_http import GitServer, git_server
from tests.support.s3 import MotoServer, moto_server

pytestmark = pytest.mark.opencode


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def set_secret(settings: Settings, name: str, value: str) -> None:
    done = ocedge("secret", "set", name, stdin=value + "\n",
                  env={"OCEDGE_STATE_DIR": str(settings.state_dir)})
    assert done.returncode == 0, done.stderr
    assert value not in done.stdout + done.stderr


def shell(client: httpx.Client, session: str, command: str) -> str:
    """``command`` through opencode's shell endpoint, as the agent's shell runs it; its output."""
    response = client.post(f"/session/{session}/shell", json={"agent": "build",
                                                              "command": command})
    assert response.status_code == 200, response.text
    outputs = [_output(part) for part in response.json()["parts"] if part["type"] == "tool"]
    assert outputs, response.text
    return "\n".join(outputs)


def _output(part: dict[str, Any]) -> str:
    state = part.get("state") or {}
    return str(state.get("output") or (state.get("metadata") or {}).get("output") or "")


def files_holding(root: Path, needles: list[bytes], skip: tuple[Path, ...] = ()) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in skip:
            data = path.read_bytes()
            found += [f"{path}: {needle[:4]!r}…" for needle in needles if needle in data]
    return found


def test_a_secret_reaches_the_agents_shell_and_git_and_nothing_else(
        tmp_path: Path, moto: MotoServer, fake_model: FakeModelServer,
        opencode_bin: str) -> None:
    bucket = moto.create_bucket("secrets-ws")
    value = "dk-" + secrets.token_urlsafe(24)
    token = "ghp_" + secrets.token_urlsafe(24)
    with git_server(tmp_path / "git", token) as git:
        remote = git.create("project")
        settings = s3_settings(tmp_path / "state", moto, bucket, model_url=fake_model.base_url,
                               git_token_hosts=git.base)
        settings.state_dir.mkdir()
        set_secret(settings, "DEPLOY_KEY", value)
        set_secret(settings, "GITHUB_TOKEN", token)
        listed = ocedge("secret", "list", "--json",
                        env={"OCEDGE_STATE_DIR": str(settings.state_dir)})
        assert [row["name"] for row in json.loads(listed.stdout)] == [
            "DEPLOY_KEY", "GITHUB_TOKEN"]
        assert value not in listed.stdout and token not in listed.stdout

        with container(settings) as c:
            c.start()
            with c.client() as oc:
                session = oc.post("/session", json={"title": "secrets"}).json()["id"]
                seen = shell(oc, session, 'printf %s "$DEPLOY_KEY" | sha256sum')
                assert hashlib.sha256(value.encode()).hexdigest() in seen
                pushed = _push_through_the_helper(oc, session, remote)
            assert c.stop() == 0, c.output()[-3000:]
        assert "from-the-agent" in git.log("project"), pushed
        assert git.pushes == 1 and git.refused >= 1  # asked, then answered by the helper

        output = c.output()
        assert "DEPLOY_KEY, GITHUB_TOKEN" in output  # the names are logged, once
        _nowhere(settings, moto, bucket, tmp_path, [value.encode(), token.encode()], git)


def _push_through_the_helper(oc: httpx.Client, session: str, remote: str) -> str:
    # No prompt can answer git here: only the helper can give it the token.
    return shell(oc, session, (
        f"export GIT_TERMINAL_PROMPT=0 && git clone {remote} project && cd project && "
        "git -c user.name=agent -c user.email=agent@example.com commit --allow-empty "
        "-m from-the-agent && git push origin HEAD:main 2>&1; echo exit=$?"))


def _nowhere(settings: Settings, moto: MotoServer, bucket: str, tmp_path: Path,
             needles: list[bytes], git: GitServer) -> None:
    # Every object of the bucket: the workspace (with the clone's .git/config) and
    # Litestream's replica of opencode's database, restored to read it whole.
    keys = moto.keys(bucket)
    assert any(key.startswith(f"{PREFIX}/project/.git/") for key in keys)
    leaks = [key for key in keys for needle in needles if needle in moto.read(bucket, key)]
    restored = restore_replica(settings, tmp_path)
    leaks += [str(restored) for needle in needles if needle in restored.read_bytes()]
    # Every file the container and opencode wrote (logs included), but the key store,
    # which holds them sealed.
    leaks += files_holding(settings.state_dir, needles,
                           skip=(settings.state_dir.resolve() / "ocedge.db",
                                 settings.state_dir / "ocedge.db"))
    assert not leaks, leaks
    assert not any(n in (settings.state_dir / "ocedge.db").read_bytes() for n in needles)
