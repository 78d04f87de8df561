"""What the deployment-kit tests share: the repository's deploy files, the tools that
check them (a missing one fails the test with its name, never a skip), the template
as SAM and as CloudFormation see it, and the host's user data as an instance of a
sample stack receives it, run against a scratch root with stub commands."""

from __future__ import annotations

import contextlib
import email
import importlib.util
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
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


# Attributes of a sample stack's resources, as CloudFormation would resolve them.
SAMPLE_ATTRIBUTES = {
    ("EdgeStreamFunctionUrl", "FunctionUrl"): "https://abc123.lambda-url.us-east-1.on.aws/",
    ("Distribution", "DomainName"): "d111111abcdef8.cloudfront.net",
    ("OriginSecret", "Value"): render.SAMPLE_VALUES["OriginSecret.Value"],
    ("Host", "PrivateDnsName"): "ip-10-86-0-10.ec2.internal",
    ("Vpc", "CidrBlock"): "10.86.0.0/24",
}
SAMPLE_PSEUDO = {
    "AWS::Region": SAMPLE_REGION, "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
    "AWS::StackName": "demo", "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/demo/"
                    "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
}
# What a property given as ``!Ref AWS::NoValue`` becomes: left out.
NO_VALUE = object()


def evaluate(node: Any, template: dict[str, Any] | None = None,
             params: dict[str, str] | None = None) -> Any:
    """``node`` as a stack of ``template`` in us-east-1 named "demo" would see it, with
    the parameters' defaults overridden by ``params``: Ref, Fn::GetAtt, Fn::Sub,
    Fn::Join, Fn::Select, Fn::Split, Fn::FindInMap, Fn::If (the template's conditions)
    and the condition functions. A function it does not know fails the test."""
    template = template or {}
    values = {name: str(p.get("Default", "")) for name, p in
              template.get("Parameters", {}).items()} | (params or {})

    def ref(name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in SAMPLE_PSEUDO:
            return SAMPLE_PSEUDO[name]
        if name in values:
            return values[name]
        if name == "Host":
            return SAMPLE_INSTANCE
        return render.SAMPLE_VALUES.get(name) or f"sample-{name}"

    def attribute(name: str, attr: str) -> str:
        return SAMPLE_ATTRIBUTES.get((name, attr)) or f"sample-{name}-{attr}"

    def condition(name: str) -> bool:
        return bool(walk(template["Conditions"][name]))

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (walk(item) for item in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        key = next(iter(value), "")
        if len(value) != 1 or not (key.startswith("Fn::") or key in ("Ref", "Condition")):
            return {k: v for k, v in ((k, walk(v)) for k, v in value.items())
                    if v is not NO_VALUE}
        (fn, arg), = value.items()
        if fn == "Ref":
            return ref(arg)
        if fn == "Condition":
            return condition(arg)
        if fn == "Fn::GetAtt":
            name, attr = arg if isinstance(arg, list) else arg.split(".", 1)
            return attribute(name, attr)
        if fn == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            known = {**render.SAMPLE_VALUES, **SAMPLE_PSEUDO, **values,
                     **{f"{n}.{a}": v for (n, a), v in SAMPLE_ATTRIBUTES.items()},
                     **{k: str(walk(v)) for k, v in names.items()}}
            return render.substitute(text, _Fallback(known))
        if fn == "Fn::Join":
            return arg[0].join(str(v) for v in walk(arg[1]))
        if fn == "Fn::Select":
            return walk(arg[1])[int(walk(arg[0]))]
        if fn == "Fn::Split":
            return str(walk(arg[1])).split(arg[0])
        if fn == "Fn::FindInMap":
            mapping, key, name = walk(arg)
            return template["Mappings"][mapping][key][name]
        if fn == "Fn::If":
            return walk(arg[1] if condition(arg[0]) else arg[2])
        if fn == "Fn::Equals":
            left, right = walk(arg)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not walk(arg[0])
        if fn == "Fn::And":
            return all(walk(a) for a in arg)
        if fn == "Fn::Or":
            return any(walk(a) for a in arg)
        if fn == "Fn::Contains":
            options, item = walk(arg)
            return item in options
        if fn == "Fn::Base64":
            return walk(arg)
        raise AssertionError(f"the sample evaluator does not know {fn}")

    return walk(node)


def refused(sam_template: dict[str, Any], **params: str) -> list[str]:
    """The assertion descriptions CloudFormation would stop the deploy with."""
    found = []
    for rule in sam_template["Rules"].values():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], sam_template, params):
            continue
        found += [a["AssertDescription"] for a in rule["Assertions"]
                  if not evaluate(a["Assert"], sam_template, params)]
    return found


class _Fallback(dict[str, str]):
    """Names Fn::Sub refers to: a sample value for a resource nobody listed."""

    def __missing__(self, key: str) -> str:
        return f"sample-{key.replace('.', '-')}"


def sample(value: Any, template: dict[str, Any] | None = None) -> str:
    """A plausible deployed value for a template expression (see ``evaluate``)."""
    return str(evaluate(value, template))


def depends_on(template: dict[str, Any], name: str) -> set[str]:
    """The resources ``name`` refers to directly (Ref, Fn::GetAtt, Fn::Sub, DependsOn)."""
    resources = set(template["Resources"])
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key == "Ref" and item in resources:
                    found.add(item)
                elif key == "Fn::GetAtt":
                    found.add(item[0] if isinstance(item, list) else item.split(".")[0])
                elif key == "Fn::Sub":
                    text = item if isinstance(item, str) else item[0]
                    found.update(n.split(".")[0] for n in re.findall(r"\$\{([^!}][^}]*)\}", text)
                                 if n.split(".")[0] in resources)
                    walk(item if isinstance(item, str) else item[1])
                else:
                    walk(item)

    resource = template["Resources"][name]
    walk(resource.get("Properties", {}))
    found.update(as_list(resource.get("DependsOn", [])))
    return found


def dependency_cycle(template: dict[str, Any]) -> list[str] | None:
    """A cycle of resources that refer to each other, if the template has one."""
    graph = {name: depends_on(template, name) for name in template["Resources"]}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                return [*path[path.index(other):], other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[name] = 2
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


class Answers:
    """Where a custom resource answers: a server on 127.0.0.1 standing in for the presigned
    S3 URL of ``event["ResponseURL"]``, recording each PUT (its headers and JSON body,
    which is what CloudFormation reads). One request at a time."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def listening(self) -> Iterator[str]:
        """The ResponseURL of one request, taking at most one answer while open."""
        received = self.received

        class Bucket(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # http.server's name for it
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, "headers": dict(self.headers),
                                 "body": json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Bucket)
        server.timeout = 10
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        try:
            # Shaped like CloudFormation's: a presigned URL whose signature has no Content-Type.
            yield (f"http://127.0.0.1:{server.server_port}/arn%3Aaws%3Acloudformation/answer"
                   "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-SignedHeaders=host&X-Amz-Signature=0")
            thread.join(server.timeout + 1)
        finally:
            server.server_close()


def cfnresponse_module() -> ModuleType:
    """A stand-in for AWS's cfnresponse module, the one Lambda gives inline (ZipFile) code,
    that behaves as its published source does ("Module source code",
    docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cfn-lambda-function-code-cfnresponsemodule.html):
    it prints the ResponseURL and the whole response body, Data included, whatever
    ``noEcho`` says, then PUTs the body with an empty Content-Type."""
    module = ModuleType("cfnresponse")
    module.SUCCESS, module.FAILED = "SUCCESS", "FAILED"  # type: ignore[attr-defined]

    def send(event: Any, context: Any, responseStatus: str,  # AWS's names, for callers
             responseData: dict[str, Any], physicalResourceId: str | None = None,
             noEcho: bool = False, reason: str | None = None) -> None:
        url = event["ResponseURL"]
        print(url)
        body = json.dumps({
            "Status": responseStatus,
            "Reason": reason or "See the details in CloudWatch Log Stream: "
                                + context.log_stream_name,
            "PhysicalResourceId": physicalResourceId or context.log_stream_name,
            "StackId": event["StackId"], "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"], "NoEcho": noEcho,
            "Data": responseData})
        print("Response body:\n" + body)
        request = urllib.request.Request(url, data=body.encode(), method="PUT",  # noqa: S310 - the test's own URL
                                         headers={"content-type": ""})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                print("Status code: " + response.reason)
        except OSError as exc:
            print("send(..) failed executing requests.put(..): " + str(exc))

    module.send = send  # type: ignore[attr-defined]
    return module


class LambdaContext:
    """What the handlers read of Lambda's context object."""

    log_stream_name = "2026/01/01/[$LATEST]0123456789abcdef0123456789abcdef"


class CustomResource:
    """The inline (ZipFile) code of a custom resource's function in ``template``, run here
    against whatever AWS the test set up (moto), answering a local stand-in for
    CloudFormation's presigned URL (``answers``). ``printed`` is everything it wrote to
    standard output or error, or logged at WARNING and above: what its CloudWatch log
    would hold."""

    def __init__(self, template: dict[str, Any], function: str,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers = Answers()
        self.printed = ""
        self.logical_id = function.removesuffix("Function")
        monkeypatch.setitem(sys.modules, "cfnresponse", cfnresponse_module())
        code = template["Resources"][function]["Properties"]["Code"]["ZipFile"]
        namespace: dict[str, Any] = {}
        exec(compile(code, function, "exec"), namespace)  # noqa: S102
        self.handler = namespace["handler"]

    def request(self, kind: str, props: dict[str, Any], old: dict[str, Any] | None = None,
                physical: str | None = None) -> dict[str, Any]:
        """Send one CloudFormation request (Create, Update, Delete); its answer, as
        CloudFormation reads it from the PUT."""
        answered = len(self.answers.received)
        output = io.StringIO()
        log = logging.StreamHandler(output)
        log.setLevel(logging.WARNING)
        logging.getLogger().addHandler(log)
        try:
            with self.answers.listening() as url, contextlib.redirect_stdout(output), \
                    contextlib.redirect_stderr(output):
                event: dict[str, Any] = {
                    "RequestType": kind, "ResponseURL": url,
                    "StackId": SAMPLE_PSEUDO["AWS::StackId"], "RequestId": f"request-{answered}",
                    "ResourceType": "AWS::CloudFormation::CustomResource",
                    "LogicalResourceId": self.logical_id, "ResourceProperties": props}
                if old is not None:
                    event["OldResourceProperties"] = old
                if physical is not None:
                    event["PhysicalResourceId"] = physical
                self.handler(event, LambdaContext())
        finally:
            logging.getLogger().removeHandler(log)
            self.printed += output.getvalue()
        assert len(self.answers.received) == answered + 1, f"no answer to {kind}"
        put = self.answers.received[-1]
        # The signature covers no Content-Type, so none may be sent (cfnresponse sends "").
        assert put["headers"].get("Content-Type") == "", put["headers"]
        body = put["body"]
        assert (body["StackId"], body["RequestId"], body["LogicalResourceId"]) == (
            event["StackId"], event["RequestId"], event["LogicalResourceId"])
        return {"status": body["Status"], "data": body["Data"],
                "physical_id": body["PhysicalResourceId"], "no_echo": body["NoEcho"],
                "reason": body["Reason"]}


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
    root.mkdir(exist_ok=True)  # a second boot of the same root: a later boot
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")
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


