"""The agent cannot take the deployment: the real container, run as root as the image
runs it, starts opencode as the agent's own user, and a command run through opencode's
shell endpoint (what a prompt-injected agent would run) finds no AWS credentials,
cannot read the supervisor's files, and cannot reach the instance metadata service.

The metadata service is a stand-in on its real address, 169.254.169.254, inside a
network namespace of the test's own; the firewall rule is deploy/host/agent-firewall.nft
exactly as the host's user data loads it. The agent's uid is the one that rule names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from container.child import descendants
from infra.backends import backends_for_tools
from infra.net import free_port
from infra.settings import Settings
from tests.support.container import Container, container
from tests.support.edge import make_settings
from tests.support.netns import NetworkNamespace, network_namespace
from tests.support.procs import alive
from tests.support.s3 import CREDENTIALS, MotoServer, moto_server

pytestmark = pytest.mark.opencode

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "deploy" / "host" / "agent-firewall.nft"
AGENT_UID = int(re.findall(r"meta skuid (\d+)", RULE.read_text())[0])
METADATA = "169.254.169.254"
# Another address on the same stand-in server: the rule, not the network, refuses.
ELSEWHERE = "10.254.0.1"
SUPERVISOR_KEY = "AKIASUPERVISORONLY01"


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Under /tmp, not pytest's (0700) temporary directory: the agent must be able to
    reach its own directories in it, as it can in the image's /var/lib/ocedge."""
    path = Path(tempfile.mkdtemp(prefix="ocedge-isolation-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def opencode_pid(c: Container) -> int:
    assert c.process is not None
    for pid in descendants(c.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"web" in argv and any(b"opencode" in arg for arg in argv):
            return pid
    raise AssertionError("opencode's process was not found")


def agent_processes() -> list[int]:
    """Processes running as the agent's uid (not zombies: the dead await their reaper)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == AGENT_UID and alive(int(entry)):
                    found.append(int(entry))
            except FileNotFoundError:
                continue
    return found


def shell(c: Container, script: str) -> str:
    """``script`` run by opencode's own shell endpoint (POST /session/{id}/shell): what
    the agent runs, with the agent's identity and environment. The endpoint takes one
    command line, so the script is a file the command runs."""
    path = Path(tempfile.gettempdir()) / f"ocedge-probe-{uuid.uuid4().hex}.sh"
    path.write_text(script)
    path.chmod(0o644)
    try:
        with c.client() as client:
            session = client.post("/session", json={})
            assert session.status_code == 200, session.text
            response = client.post(f"/session/{session.json()['id']}/shell",
                                   json={"agent": "build", "command": f"bash {path}"},
                                   timeout=120)
    finally:
        path.unlink()
    assert response.status_code == 200, response.text
    return "\n".join(str(part["state"].get("output", "")) for part in response.json()["parts"]
                     if part.get("type") == "tool")


def probes(paths: list[Path]) -> str:
    reads = "\n".join(f'if cat "{p}" >/dev/null 2>&1; then echo "read:{p}"; '
                      f'else echo "denied:{p}"; fi' for p in paths)
    return f"""
echo "uid=$(id -u)"
echo "aws_variables=$(env | grep -c '^AWS_')"
if [ -e "$HOME/.aws" ]; then echo "home_aws=yes"; else echo "home_aws=no"; fi
{reads}
for address in {METADATA} {ELSEWHERE}; do
  if (exec 3<>"/dev/tcp/$address/80") 2>/dev/null; then echo "connect:$address=open"
  else echo "connect:$address=refused"; fi
done
echo written-by-the-agent > agent-probe.txt && echo "probe_owner=$(stat -c %u agent-probe.txt)"
echo "database_owner=$(stat -c %u "$XDG_DATA_HOME/opencode/opencode.db")"
setsid sleep 600 >/dev/null 2>&1 < /dev/null &
echo "probes done"
"""


def answers(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def start_metadata_stand_in(ns: NetworkNamespace, root: Path) -> subprocess.Popen[bytes]:
    """A stand-in for the instance metadata service, serving the role's credentials."""
    credentials = root / "latest" / "meta-data" / "iam" / "security-credentials"
    credentials.mkdir(parents=True)
    (credentials / "ocedge-host").write_text(f'{{"AccessKeyId": "{SUPERVISOR_KEY}"}}')
    server = subprocess.Popen(
        ns.command([sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0",
                    "--directory", str(root)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((METADATA, 80), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    ns.call(ready)
    return server


def test_the_agent_runs_apart_and_reaches_neither_credentials_nor_files_nor_metadata(
        state_dir: Path, opencode_bin: str) -> None:
    # The supervisor's AWS access, as on AWS: variables and a credentials file.
    supervisor_home = state_dir / "home"
    (supervisor_home / ".aws").mkdir(parents=True)
    credentials_file = supervisor_home / ".aws" / "credentials"
    credentials_file.write_text(f"[default]\naws_access_key_id = {SUPERVISOR_KEY}\n")
    settings = make_settings(state_dir).with_overrides(
        agent_user=f"{AGENT_UID}:{AGENT_UID}",
        system_env={**make_settings(state_dir).system_env, **CREDENTIALS,
                    "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file)})
    backends = backends_for_tools(settings)
    backends.secrets.ensure()  # the local stores and secrets, as `ocedge dev` leaves them
    supervisor_files = [credentials_file, state_dir / "edge-secrets.json",
                        state_dir / "container-secrets.json", state_dir / "ocedge.db"]
    assert all(p.exists() for p in supervisor_files)
    assert not agent_processes(), "something else runs as the agent's uid here"

    with network_namespace() as ns:
        ns.ip("addr", "add", f"{METADATA}/32", "dev", "lo")
        ns.ip("addr", "add", f"{ELSEWHERE}/32", "dev", "lo")
        ns.run(["nft", "-f", str(RULE)])  # the rule text the user data installs
        metadata = start_metadata_stand_in(ns, state_dir / "metadata-stand-in")
        try:
            with container(settings, wrapper=ns.command()) as c:
                c.start()
                assert c.process is not None
                supervisor = c.process.pid
                agent = opencode_pid(c)
                assert uid_of(supervisor) == 0
                assert uid_of(agent) == AGENT_UID != 0

                paths = [*supervisor_files, Path(f"/proc/{supervisor}/environ")]
                output = ns.call(shell, c, probes(paths))
                found = answers(output)
                assert "probes done" in output, output
                assert found.get("uid") == str(AGENT_UID), output
                assert found["aws_variables"] == "0" and found["home_aws"] == "no"
                assert all(f"denied:{p}" in output for p in paths), output
                assert found[f"connect:{METADATA}"] == "refused"
                assert found[f"connect:{ELSEWHERE}"] == "open"  # only the metadata service
                assert found["probe_owner"] == found["database_owner"] == str(AGENT_UID)
                assert SUPERVISOR_KEY not in output

                # The supervisor's uid still reaches it: the role's credentials are its.
                def supervisor_reads() -> Any:
                    return httpx.get(f"http://{METADATA}/latest/meta-data/iam/"
                                     "security-credentials/ocedge-host", timeout=5).json()

                assert ns.call(supervisor_reads)["AccessKeyId"] == SUPERVISOR_KEY
                assert agent_processes(), "the agent's detached process should still run"

                assert c.stop() == 0, c.output()[-3000:]
            # Whatever the agent left running (detached from opencode) ended with it.
            assert not agent_processes(), c.output()[-2000:]
            assert os.stat(settings.state_dir).st_mode & 0o777 == 0o711
        finally:
            metadata.terminate()
            metadata.wait(10)
            for pid in agent_processes():  # what a failed run left, by PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_through_the_gate_the_agent_has_nothing_that_opens_it(
        state_dir: Path, opencode_bin: str) -> None:
    """The gate's credential is the supervisor's alone: not in opencode's environment
    nor in anything a command run through opencode's shell can read; opencode's own
    password, which the agent can read, is refused by the gate."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: the container runs as root, as in the image")
    settings = make_settings(state_dir).with_overrides(
        agent_user=f"{AGENT_UID}:{AGENT_UID}", gate=True, gate_host="127.0.0.1",
        gate_port=free_port())
    with container(settings) as c:
        c.start()
        assert c.state is not None and c.state.credential and c.state.cert_pem
        credential = c.state.credential
        opencode = Path(f"/proc/{opencode_pid(c)}/environ").read_bytes().decode()
        password = dict(item.partition("=")[::2] for item in opencode.split("\0")
                        if "=" in item)["OPENCODE_SERVER_PASSWORD"]
        assert password and password != credential and credential not in opencode
        with c.client() as client:
            assert client.get("/global/health").status_code == 200
        with c.client() as client:  # a connection of its own, as an attacker's
            leaked = client.get("/global/health", auth=("opencode", password))
            assert leaked.status_code == 401, leaked.text
        # Everything the agent can read of every process's environment and arguments,
        # and the state files it might find.
        # (Into a file: opencode shortens a long command output.)
        shell(c, f"""{{
env
for p in /proc/[0-9]*; do cat "$p/environ" "$p/cmdline" 2>/dev/null | tr '\\0' '\\n'; done
cat {state_dir}/ocedge.db {state_dir}/ocedge.db-wal 2>/dev/null | tr -c '[:print:]' '\\n'
echo "agent probe done"
}} > agent-view.txt""")
        seen = (settings.workspace_path / "agent-view.txt").read_text(errors="replace")
        assert "agent probe done" in seen and "OPENCODE_SERVER_PASSWORD" in seen, seen[-2000:]
        assert credential not in seen
        assert c.stop() == 0, c.output()[-3000:]


# -- the S3 workspace: the mount is the agent's, the cache and Litestream's state not --


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def test_on_the_s3_workspace_the_agent_owns_the_mount_and_its_database(
        state_dir: Path, moto: MotoServer, opencode_bin: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root: the container runs as root, as in the image")
    bucket = moto.create_bucket(f"iso-{uuid.uuid4().hex[:12]}")
    base = make_settings(state_dir)
    settings: Settings = base.with_overrides(
        agent_user=f"{AGENT_UID}:{AGENT_UID}", workspace="s3", s3_bucket=bucket,
        s3_prefix="workspace", s3_endpoint=moto.endpoint,
        system_env={**base.system_env, **CREDENTIALS})
    with container(settings) as c:
        c.start()
        output = shell(c, f"""
echo "root_owner=$(stat -c %u .)"
echo from-the-agent > agent-file.txt && echo "file_owner=$(stat -c %u agent-file.txt)"
for name in vfs-cache opencode-db.litestream; do
  if ls "{state_dir}/$name" >/dev/null 2>&1; then echo "$name=listed"; else echo "$name=denied"; fi
done
echo "database_owner=$(stat -c %u "$XDG_DATA_HOME/opencode/opencode.db")"
""")
        found = answers(output)
        assert found["root_owner"] == found["file_owner"] == str(AGENT_UID), output
        assert found["vfs-cache"] == found["opencode-db.litestream"] == "denied", output
        assert found["database_owner"] == str(AGENT_UID)
        with c.client() as client:
            sessions = {s["id"] for s in client.get("/session").json()}
        # Litestream (root) keeps its state where the agent cannot plant anything.
        meta = state_dir / "opencode-db.litestream"
        assert meta.stat().st_uid == 0 and meta.stat().st_mode & 0o777 == 0o700
        assert c.stop() == 0, c.output()[-3000:]
    assert moto.read(bucket, "workspace/agent-file.txt") == b"from-the-agent\n"

    # A new machine: the database comes back from the replica, as the agent's again.
    shutil.rmtree(settings.opencode_data)
    with container(settings) as again:
        again.start()
        database = settings.opencode_data / "data" / "opencode" / "opencode.db"
        assert database.stat().st_uid == AGENT_UID
        with again.client() as client:
            assert sessions <= {s["id"] for s in client.get("/session").json()}
            assert client.post("/session", json={}).status_code == 200  # still writable
        assert again.stop() == 0, again.output()[-3000:]


# -- root never follows a link the agent planted ----------------------------------------


def test_litestream_sees_the_agents_directory_without_following_its_symlinks(
        state_dir: Path) -> None:
    from container.workspace.litestream import Litestream, LitestreamError
    from container.workspace.location import S3Location

    if os.geteuid() != 0:
        pytest.fail("this test needs root: it makes a mount namespace, as the container does")
    secret = state_dir / "root-only"
    secret.write_text("the supervisor's secret\n")
    secret.chmod(0o600)
    data = state_dir / "agent-data"
    database_dir = data / "data" / "opencode"
    database_dir.mkdir(parents=True)
    (database_dir / "opencode.db-wal").symlink_to(secret)  # what the agent could plant
    run_dir = state_dir / "run"
    run_dir.mkdir()
    # Stands in for the litestream binary: reads the WAL of the database its
    # configuration names, as Litestream would.
    probe = state_dir / "probe.sh"
    probe.write_text('#!/bin/sh\ndb=$(grep -o \'"path": "[^"]*"\' "$3" | head -1 | cut -d\'"\' -f4)\n'
                     'if cat "$db-wal"; then echo FOLLOWED; else echo REFUSED; fi\n')
    probe.chmod(0o755)
    location = S3Location("bucket", "prefix")

    def probed(trusted: Path | None) -> str:
        litestream = Litestream(str(probe), database_dir / "opencode.db", location, run_dir,
                                {"PATH": os.defpath}, meta=state_dir / "meta", trusted=trusted)
        litestream.write_config()
        child = asyncio.run(litestream._run("probe", "replicate", timeout=20))
        return child.tail(5)

    confined = probed(data)
    assert "REFUSED" in confined and "supervisor's secret" not in confined, confined
    assert "FOLLOWED" in probed(None)  # what root would do without the view
    # A directory on the way that is a symlink is refused before anything runs.
    (data / "data").rename(data / "elsewhere")
    (data / "data").symlink_to(data / "elsewhere")
    with pytest.raises(LitestreamError, match="cannot be used"):
        probed(data)


def test_the_supervisor_refuses_a_symlink_planted_in_the_agents_directories(
        state_dir: Path) -> None:
    from container.agent import AgentUser, AgentUserError

    if os.geteuid() != 0:
        pytest.fail("this test needs root: it hands directories to another user")
    agent = AgentUser(AGENT_UID, AGENT_UID)
    home = agent.own(state_dir / "opencode")
    assert home.stat().st_uid == AGENT_UID
    target = state_dir / "root-only"
    target.mkdir(mode=0o700)
    (home / "data").symlink_to(target)  # as the agent could, in its own directory
    os.lchown(home / "data", AGENT_UID, AGENT_UID)
    with pytest.raises(AgentUserError, match="symlink"):
        agent.own(home / "data" / "opencode")
    assert not (target / "opencode").exists() and target.stat().st_uid == 0
