"""What the deployment-kit tests share: the repository's deploy files, the tools that
check them (a missing one fails the test with its name, never a skip), the template
as SAM and as CloudFormation see it, and the host's user data as an instance of a
sample stack receives it, run against a scratch root with stub commands."""

from __future__ import annotations

import email
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "Dockerfile"
HOST = ROOT / "deploy" / "host"
SAMPLE_REGION = "us-east-1"
# The instance id the stub instance metadata service answers.
SAMPLE_INSTANCE = "i-0123456789abcdef0"


def tool(name: str, how: str) -> str:
    """The path of a command-line tool, from the venv or PATH; fails naming it."""
    venv = Path(sys.executable).parent / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed ({how}); `make setup-test` installs it")
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


def load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load_render()


@pytest.fixture(scope="module")
def sam_template() -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    parsed: dict[str, Any] = yaml_parse(TEMPLATE.read_text())
    return parsed


@pytest.fixture(scope="module")
def cfn(sam_template: dict[str, Any]) -> dict[str, Any]:
    """template.yaml as CloudFormation sees it after the SAM transform."""
    from samtranslator.translator.transform import transform  # type: ignore[import-untyped]

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    template = json.loads(json.dumps(sam_template))
    # The transform wants an S3 location where sam build/package would put one.
    template["Globals"]["Function"]["CodeUri"] = "s3://bucket/code.zip"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", SAMPLE_REGION)  # the translator insists on one
        result: dict[str, Any] = transform(template, {"AWS::Region": SAMPLE_REGION},
                                           NoManagedPolicies())
    return result


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def sample(value: Any) -> str:
    """A plausible deployed value for a template expression (Ref, GetAtt, Sub)."""
    if isinstance(value, str | int | float):
        return str(value)
    (fn, arg), = value.items()
    if fn == "Ref":
        return render.SAMPLE_VALUES.get(arg) or f"sample-{arg}"
    if fn == "Fn::GetAtt":
        return "https://abc123.lambda-url.us-east-1.on.aws/" if arg[1] == "FunctionUrl" \
            else f"sample-{arg[0]}-{arg[1]}"
    if fn == "Fn::Sub":
        return str(render.substitute(arg, render.SAMPLE_VALUES))
    raise AssertionError(f"no sample value for {value!r}")


def statements(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement anywhere under ``node`` (identity and resource policies)."""
    if isinstance(node, dict):
        if "Statement" in node:
            found = node["Statement"]
            for statement in found if isinstance(found, list) else [found]:
                yield where, statement
        for key, value in node.items():
            yield from statements(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from statements(value, f"{where}/{index}")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def user_data() -> str:
    """The host's user data as an instance of a sample stack receives it."""
    return str(render.substitute(render.sub_body(), render.SAMPLE_VALUES))


def shell_part(user_data: str) -> str:
    message = email.message_from_string(user_data)
    assert message.is_multipart()
    scripts = [part.get_payload() for part in message.walk()
               if part.get_content_type() == "text/x-shellscript"]
    assert len(scripts) == 1
    return str(scripts[0])


def stub(directory: Path, name: str, log: Path, body: str = "") -> None:
    path = directory / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n{body}')
    path.chmod(0o755)


def state_item_stub(status: str, host: str) -> str:
    """The body of a stub ``aws`` that answers start-requested's GetItem as the AWS CLI
    does with ``--query '[Item.status.S, Item.host.S]' --output text``."""
    return f'printf "%s\\t%s\\n" "{status}" "{host}"\n'


def boot(tmp_path: Path, user_data: str, state: tuple[str, str] = ("starting", SAMPLE_INSTANCE),
         docker: bool = False) -> tuple[Path, list[str]]:
    """Run the user-data script as at a boot, against a scratch root, with stub dnf,
    systemctl, curl (the instance metadata service: this is SAMPLE_INSTANCE) and aws
    (the state item is ``state``: status, host); returns the root and the commands run."""
    root, bin_dir, log = tmp_path / "root", tmp_path / "bin", tmp_path / "calls.log"
    root.mkdir()
    bin_dir.mkdir()
    log.touch()
    stub(bin_dir, "dnf", log)
    stub(bin_dir, "systemctl", log)
    # Never the machine's own firewall: the rule is applied for real in a network
    # namespace by tests/container/test_isolation.py.
    stub(bin_dir, "nft", log)
    stub(bin_dir, "curl", log, f'case "$*" in *api/token*) echo token ;; '
                               f'*instance-id*) echo {SAMPLE_INSTANCE} ;; esac\n')
    stub(bin_dir, "aws", log, state_item_stub(*state))
    if docker:
        stub(bin_dir, "docker", log)
    script = tmp_path / "user-data.sh"
    script.write_text(shell_part(user_data))
    # No docker on this PATH (unless asked): a first boot, before Docker is installed.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DESTDIR": str(root), "HOME": str(tmp_path)}
    result = run(["bash", str(script)], env=env)
    assert result.returncode == 0, result.stderr
    return root, log.read_text().splitlines()


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines()
             if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


