"""The EC2 host: the user data (rendered from deploy/host/ into template.yaml), the
decision it makes at every boot (start the container only when a start was asked of
this instance), the systemd unit, and the scripts it installs. Run against a scratch
root with stub commands; nothing reaches AWS."""

from __future__ import annotations

import email
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from infra.lifecycle import EXIT_ASLEEP
from infra.settings import Settings
from tests.support.deploy import (
    HOST,
    ROOT,
    SAMPLE_INSTANCE,
    SAMPLE_REGION,
    boot,
    env_file,
    render,
    run,
    sam_template,
    shell_part,
    state_item_stub,
    stub,
    tool,
    user_data,
)

__all__ = ["sam_template", "user_data"]  # fixtures


@pytest.fixture
def host_root(tmp_path: Path, user_data: str) -> tuple[Path, list[str]]:
    """A first boot of an instance that a wake asked to start."""
    return boot(tmp_path, user_data)


# ---------------------------------------------------------------- the host

def test_user_data_in_the_template_is_rendered_from_deploy_host(
        sam_template: dict[str, Any]) -> None:
    assert render.main(["--check"]) == 0, "run `python deploy/render.py`"
    body = sam_template["Resources"]["Host"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    assert body == render.sub_body()


def test_user_data_refers_only_to_what_the_stack_defines(sam_template: dict[str, Any]) -> None:
    sub = sam_template["Resources"]["Host"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    names = set(sam_template["Resources"]) | set(sam_template["Parameters"]) | set(sub[1])
    for ref in re.findall(r"\$\{([^!}][^}]*)\}", sub[0]):
        assert ref.split(".")[0] in names or ref.startswith("AWS::"), ref
    assert set(render.SAMPLE_VALUES) >= set(re.findall(r"\$\{([^!}][^}]*)\}", sub[0]))


def test_user_data_fits_in_what_ec2_accepts(user_data: str) -> None:
    assert len(user_data.encode()) <= render.USER_DATA_LIMIT
    message = email.message_from_string(user_data)
    kinds = [part.get_content_type() for part in message.walk() if not part.is_multipart()]
    assert kinds == ["text/cloud-config", "text/x-shellscript"]
    config = next(part.get_payload() for part in message.walk()
                  if part.get_content_type() == "text/cloud-config")
    assert "[scripts-user, always]" in config  # the script runs at every boot


def test_rendered_user_data_script_passes_shellcheck(tmp_path: Path, user_data: str) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text(shell_part(user_data))
    result = run([tool("shellcheck", "Debian package shellcheck"), "--shell=bash", str(script)])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def repository_shell_scripts() -> list[Path]:
    skip = {".git", ".venv", "node_modules", ".aws-sam", ".ocedge", "__pycache__",
            ".mypy_cache", ".ruff_cache", ".pytest_cache", "build", ".bench"}
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for filename in filenames:
            path = Path(dirpath) / filename
            if path.suffix in (".sh", ".bash"):
                found.append(path)
                continue
            try:
                with path.open("rb") as handle:
                    first = handle.readline(200)
            except OSError:
                continue
            if re.match(rb"#!\s*(/usr)?/bin/(env\s+)?(ba|da)?sh\b", first):
                found.append(path)
    return sorted(found)


def test_every_shell_script_in_the_repository_passes_shellcheck() -> None:
    scripts = repository_shell_scripts()
    names = {str(p.relative_to(ROOT)) for p in scripts}
    assert {"deploy/host/user-data.sh", "deploy/host/pull-image.sh", "deploy/push-image.sh",
            "deploy/host/start-requested.sh", "deploy/host/after-exit.sh",
            "edge/lambda_stream.sh", ".ci/run"} <= names
    result = run([tool("shellcheck", "Debian package shellcheck"), *map(str, scripts)])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_first_boot_installs_docker_writes_the_unit_and_starts_it_when_asked(
        host_root: tuple[Path, list[str]]) -> None:
    root, calls = host_root
    assert "dnf install --assumeyes --quiet docker" in calls
    # The decision reads the state item, strongly consistent, with the stack's table.
    reads = [c for c in calls if c.startswith("aws dynamodb get-item")]
    assert len(reads) == 1 and "--consistent-read" in reads[0]
    assert f"--table-name {render.SAMPLE_VALUES['StateTable']}" in reads[0]
    # The decision comes after the unit is in place, and the container starts last.
    assert calls.index(reads[0]) > calls.index("systemctl daemon-reload")
    assert [c for c in calls if c.startswith("systemctl")][-3:] == [
        "systemctl daemon-reload", "systemctl enable docker.service",
        "systemctl start --no-block ocedge.service"]
    host = env_file(root / "etc/ocedge/host.env")
    assert host == {
        "IMAGE_URI": "123456789012.dkr.ecr.us-east-1.amazonaws.com/demo-repository:latest",
        "AWS_REGION": "us-east-1", "LOG_GROUP": "/opencode-edge/demo/container"}
    assert os.access(root / "usr/local/libexec/ocedge/pull-image", os.X_OK)
    assert (root / "usr/local/libexec/ocedge/pull-image").read_text() == \
        (HOST / "pull-image.sh").read_text()
    assert (root / "etc/systemd/system/ocedge.service").read_text() == \
        (HOST / "ocedge.service").read_text()
    for name in ("start-requested", "after-exit"):
        installed = root / "usr/local/libexec/ocedge" / name
        assert os.access(installed, os.X_OK), name
        assert installed.read_text() == (HOST / f"{name}.sh").read_text()


@pytest.mark.parametrize("state", [
    ("stopped", SAMPLE_INSTANCE),  # CloudFormation started it; nobody asked
    ("running", SAMPLE_INSTANCE),  # its container died with the host; nobody asked again
    ("starting", "i-0ld0000000000000"),  # a wake asked the instance this one replaced
    ("None", "None"),  # a new deployment: no state item yet
])
def test_a_boot_nobody_asked_for_powers_off_without_starting_the_container(
        tmp_path: Path, user_data: str, state: tuple[str, str]) -> None:
    _, calls = boot(tmp_path, user_data, state=state, docker=True)
    assert "systemctl start --no-block ocedge.service" not in calls
    assert calls[-1] == "systemctl poweroff --no-block"


def decide(tmp_path: Path, aws_body: str, instance: str = SAMPLE_INSTANCE,
           extra: str = "") -> tuple[int, str, list[str]]:
    """Run start-requested with a stub ``aws`` and a container.env naming ``instance``."""
    root, bin_dir, log = tmp_path / "root", tmp_path / "bin", tmp_path / "calls.log"
    (root / "etc/ocedge").mkdir(parents=True)
    bin_dir.mkdir()
    log.touch()
    (root / "etc/ocedge/container.env").write_text(
        f"OCEDGE_STATE_TABLE=demo-state\nAWS_REGION={SAMPLE_REGION}\n"
        f"OCEDGE_INSTANCE_ID={instance}\n{extra}")
    stub(bin_dir, "aws", log, aws_body)
    stub(bin_dir, "sleep", log)
    result = run([str(HOST / "start-requested.sh")],
                 env={"PATH": f"{bin_dir}:/usr/bin:/bin", "DESTDIR": str(root)})
    return result.returncode, result.stdout + result.stderr, log.read_text().splitlines()


def test_start_requested_says_yes_only_for_a_start_leased_for_this_instance(
        tmp_path: Path) -> None:
    code, said, calls = decide(tmp_path, state_item_stub("starting", SAMPLE_INSTANCE))
    assert code == 0 and SAMPLE_INSTANCE in said
    call, = calls
    assert call.startswith("aws dynamodb get-item --region us-east-1 --table-name demo-state")
    assert "--endpoint-url" not in call  # AWS itself, unless told otherwise
    for index, (status, host) in enumerate([("starting", "i-0ther"), ("stopped", SAMPLE_INSTANCE),
                                            ("failed", SAMPLE_INSTANCE), ("None", "None")]):
        code, said, _ = decide(tmp_path / str(index), state_item_stub(status, host))
        assert code == 1, (status, host)
        assert f"the deployment is {status} on {host}" in said


def test_start_requested_retries_a_failed_read_then_gives_up_with_2(tmp_path: Path) -> None:
    code, said, calls = decide(tmp_path, "exit 255\n")
    assert code == 2
    assert [c.split()[0] for c in calls] == ["aws", "sleep", "aws", "sleep", "aws", "sleep"]
    assert said.count("could not read the state item") == 3


def test_start_requested_talks_to_the_endpoint_it_is_given(tmp_path: Path) -> None:
    code, _, calls = decide(tmp_path, state_item_stub("starting", SAMPLE_INSTANCE),
                            extra="OCEDGE_AWS_ENDPOINT=http://127.0.0.1:5000\n")
    assert code == 0 and "--endpoint-url http://127.0.0.1:5000" in calls[0]


@pytest.mark.parametrize(("exit_code", "exit_status", "powers_off"), [
    ("exited", str(EXIT_ASLEEP), True),  # asleep: the only way to power off
    ("exited", "0", False),  # `systemctl stop`, or the OS shutting down
    ("exited", "1", False),  # a crash: systemd restarts it
    ("killed", "TERM", False),
    ("exited", "", False),
])
def test_after_exit_powers_off_only_when_the_container_is_asleep(
        tmp_path: Path, exit_code: str, exit_status: str, powers_off: bool) -> None:
    log = tmp_path / "calls.log"
    log.touch()
    stub(tmp_path, "systemctl", log)
    result = run([str(HOST / "after-exit.sh")],
                 env={"PATH": f"{tmp_path}:/usr/bin:/bin", "EXIT_CODE": exit_code,
                      "EXIT_STATUS": exit_status, "SERVICE_RESULT": "success"})
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == (["systemctl poweroff --no-block"] if powers_off else [])


def test_the_containers_settings_are_roots_alone(host_root: tuple[Path, list[str]],
                                                tmp_path: Path, user_data: str) -> None:
    # They hold CloudFront's secret origin header; a later boot rewrites them as 0600 too.
    settings = host_root[0] / "etc/ocedge/container.env"
    assert settings.stat().st_mode & 0o777 == 0o600
    settings.chmod(0o644)  # as an older version of the user data left it
    root, _ = boot(tmp_path, user_data, docker=True)
    assert root == host_root[0]
    assert settings.stat().st_mode & 0o777 == 0o600


def test_later_boots_skip_the_install(tmp_path: Path, user_data: str) -> None:
    _, calls = boot(tmp_path, user_data, docker=True)
    assert not [c for c in calls if c.startswith("dnf")]


def test_the_container_gets_valid_settings(host_root: tuple[Path, list[str]],
                                           sam_template: dict[str, Any]) -> None:
    env = env_file(host_root[0] / "etc/ocedge/container.env")
    settings = Settings.from_env(env)  # an unknown OCEDGE_ name would raise
    assert settings.backend == "aws" and settings.workspace == "s3"
    assert settings.s3_bucket == render.SAMPLE_VALUES["Bucket"]
    assert settings.keys_table and settings.state_table
    # The container's secrets only: the edge's parameter is not the host's to read.
    assert settings.container_secrets_parameter == \
        render.SAMPLE_VALUES["ContainerSecretsParameter"]
    assert settings.secrets_parameter is None
    assert settings.gate is True
    assert settings.gate_port == sam_template["Mappings"]["Gate"]["Container"]["Port"]
    # The terminal listener for CloudFront's VPC origin, on the instance's interfaces
    # (the security group admits its port from CloudFront only), and the secret it checks.
    assert settings.terminal_host == "0.0.0.0"
    assert settings.terminal_port == sam_template["Mappings"]["Terminal"]["Container"]["Port"]
    assert settings.origin_secret == render.SAMPLE_VALUES["OriginSecret.Value"]
    assert env["AWS_REGION"] == SAMPLE_REGION
    # Which instance this is, from the instance metadata service: the container claims
    # only a start asked of it.
    assert settings.instance_id == SAMPLE_INSTANCE


def systemd_root(base: Path) -> Path:
    """A root with the distribution's units and stand-ins for what the host adds."""
    units = Path("/usr/lib/systemd/system")
    if not units.is_dir():
        pytest.fail("systemd's units are missing (Debian package systemd)")
    shutil.copytree(units, base / "usr/lib/systemd/system", symlinks=True)
    (base / "usr/bin").mkdir(parents=True)
    docker = base / "usr/bin/docker"
    docker.write_text("#!/bin/sh\n")
    docker.chmod(0o755)
    for name in ("docker.service", "cloud-final.service"):
        (base / "etc/systemd/system" / name).write_text(
            f"[Unit]\nDescription=stand-in for {name}\n[Service]\nExecStart=/usr/bin/docker\n")
    return base


def test_systemd_unit_verifies(host_root: tuple[Path, list[str]]) -> None:
    root = systemd_root(host_root[0])
    analyze = tool("systemd-analyze", "Debian package systemd")
    result = run([analyze, "verify", f"--root={root}", "/etc/systemd/system/ocedge.service"],
                 env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def unit_values(text: str, key: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [line.split("=", 1)[1].strip() for line in joined.splitlines()
            if line.startswith(f"{key}=")]


def test_the_unit_powers_off_only_when_asleep_and_restarts_a_crash() -> None:
    text = (HOST / "ocedge.service").read_text()
    # A manual `systemctl stop` is a success too: powering off on success would turn it
    # into a power-off. Only the asleep status does, through after-exit.
    assert unit_values(text, "OnSuccess") == []
    assert unit_values(text, "SuccessExitStatus") == [str(EXIT_ASLEEP)]
    assert unit_values(text, "ExecStopPost") == ["/usr/local/libexec/ocedge/after-exit"]
    assert f"asleep={EXIT_ASLEEP}" in (HOST / "after-exit.sh").read_text()
    assert unit_values(text, "Restart") == ["on-failure"]
    assert unit_values(text, "OnFailure") == ["poweroff.target"]
    run_line, = unit_values(text, "ExecStart")
    words = run_line.split()
    assert words[:3] == ["/usr/bin/docker", "run", "--rm"]
    for flag in ("--device /dev/fuse", "--cap-add SYS_ADMIN", "--network host",
                 "--log-driver awslogs", "--env-file /etc/ocedge/container.env"):
        assert flag in " ".join(words), flag
    assert words[-1] == "${IMAGE_URI}"


def test_pull_image_logs_in_to_the_stacks_registry(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    stub(tmp_path, "aws", log, "echo token\n")
    stub(tmp_path, "docker", log, "cat >/dev/null\n")
    image = render.SAMPLE_VALUES["Repository.RepositoryUri"] + ":latest"
    result = run(["bash", str(HOST / "pull-image.sh")],
                 env={"PATH": f"{tmp_path}:/usr/bin:/bin", "IMAGE_URI": image,
                      "AWS_REGION": SAMPLE_REGION})
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    # The two sides of the login pipe run at once, in either order.
    assert sorted(calls[:2]) == [
        "aws ecr get-login-password --region us-east-1",
        "docker login --username AWS --password-stdin "
        "123456789012.dkr.ecr.us-east-1.amazonaws.com"]
    assert calls[2:] == [f"docker pull --quiet {image}", "docker image prune --force"]


