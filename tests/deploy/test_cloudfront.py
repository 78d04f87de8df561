"""The web address on AWS: the CloudFront distribution in template.yaml, its two origins
and behaviours, the viewer-request function (run under node, as shipped), the secret
origin header (its custom resource run against moto) and the terminal's way in
through a VPC origin. Nothing here reaches AWS."""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
import pytest
from moto import mock_aws

from edge.stream_deadline import SILENCE
from infra.cloudfront import (
    ORIGIN_SECRET_HEADER,
    TERMINAL_PATH,
    VIEWER_ADDRESS_HEADER,
    VIEWER_HOST_HEADER,
)
from infra.settings import Settings
from tests.support.aws import aws_credentials
from tests.support.cloudfront import CloudFrontStandIn, path_pattern
from tests.support.deploy import (
    CustomResource,
    cfn,
    dependency_cycle,
    depends_on,
    evaluate,
    refused,
    render,
    resources,
    run,
    sam_template,
    tool,
)
from tests.support.iam import Request, allowed, parameter_arn, role_statements

__all__ = ["aws_credentials", "cfn", "sam_template"]  # fixtures

# AWS's managed policies (docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/
# using-managed-cache-policies.html, .../using-managed-origin-request-policies.html).
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER_EXCEPT_HOST_HEADER = "b689b0a8-53d0-40ab-baf2-68738e2966ac"
ALL_METHODS = {"GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"}
# What CloudFront names the security group of a VPC origin (private-content-vpc-origins.html).
VPC_ORIGIN_GROUP = "CloudFront-VPCOrigins-Service-SG"
SECRET = {"Fn::GetAtt": ["OriginSecret", "Value"]}
PARAMETER = "/opencode-edge/demo/origin-secret"


def distribution(template: dict[str, Any], **params: str) -> dict[str, Any]:
    """The distribution's configuration as a stack with these parameters has it."""
    config: dict[str, Any] = evaluate(
        template["Resources"]["Distribution"]["Properties"]["DistributionConfig"],
        template, params)
    return config


def origin(template: dict[str, Any], origin_id: str) -> dict[str, Any]:
    found, = [o for o in template["Resources"]["Distribution"]["Properties"]
              ["DistributionConfig"]["Origins"] if o["Id"] == origin_id]
    return dict(found)


# ---------------------------------------------------------------- the distribution

def test_one_address_for_browsers_with_nothing_cached(cfn: dict[str, Any]) -> None:
    config = distribution(cfn)
    assert config["Enabled"] is True
    assert config["HttpVersion"] == "http2and3" and config["IPV6Enabled"] is True
    assert config["PriceClass"] == "PriceClass_100"
    behaviours = [config["DefaultCacheBehavior"], *config["CacheBehaviors"]]
    assert len(behaviours) == 2
    for behaviour in behaviours:
        assert behaviour["CachePolicyId"] == CACHING_DISABLED
        assert set(behaviour["AllowedMethods"]) == ALL_METHODS
        assert behaviour["ViewerProtocolPolicy"] == "redirect-to-https"
        assert behaviour["Compress"] is False
        # No legacy settings beside the policies (they would be refused together).
        assert "ForwardedValues" not in behaviour and "DefaultTTL" not in behaviour
    assert cfn["Outputs"]["WebUrl"]["Value"]["Fn::If"][0] == "CustomDomain"
    assert evaluate(cfn["Outputs"]["WebUrl"]["Value"], cfn) == \
        "https://d111111abcdef8.cloudfront.net/"


def test_the_terminal_path_goes_to_the_instance_and_everything_else_to_the_edge(
        cfn: dict[str, Any]) -> None:
    config = distribution(cfn)
    assert config["DefaultCacheBehavior"]["TargetOriginId"] == "edge"
    terminal, = config["CacheBehaviors"]
    assert (terminal["PathPattern"], terminal["TargetOriginId"]) == ("/pty/*/connect", "terminal")
    # CloudFront's * matches any characters, / among them; the listener then takes exactly
    # the paths infra/cloudfront.py's TERMINAL_PATH fullmatches, all of which it covers.
    pattern = path_pattern(terminal["PathPattern"])
    for path in ("/pty/pty_01ABC/connect", "/pty/a-b_c/connect"):
        assert TERMINAL_PATH.fullmatch(path) and pattern.fullmatch(path)
    for path in ("/pty/a.b/connect", "/pty/a/b/connect", "/pty//connect"):
        assert pattern.fullmatch(path) and not TERMINAL_PATH.fullmatch(path)  # listener: 4xx
    assert not pattern.fullmatch("/pty/x/connect-token")  # minted through the edge
    assert not pattern.fullmatch("/PTY/x/connect")  # case sensitive: the edge's
    assert not pattern.fullmatch("/pty/x") and not pattern.fullmatch("/global/event")


def test_the_edge_gets_every_viewer_header_but_the_plain_http_hop_no_cookie(
        cfn: dict[str, Any]) -> None:
    config = cfn["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    # The edge, over HTTPS: every viewer header but Host (its login needs the cookie).
    assert config["DefaultCacheBehavior"]["OriginRequestPolicyId"] == \
        ALL_VIEWER_EXCEPT_HOST_HEADER
    # The terminal, over plain HTTP in the VPC: its own policy, and only it.
    terminal, = config["CacheBehaviors"]
    assert terminal["OriginRequestPolicyId"] == {"Ref": "TerminalRequestPolicy"}
    policies = resources(cfn, "AWS::CloudFront::OriginRequestPolicy")
    assert set(policies) == {"TerminalRequestPolicy"}
    policy = policies["TerminalRequestPolicy"]["Properties"]["OriginRequestPolicyConfig"]
    headers = policy["HeadersConfig"]
    assert headers["HeaderBehavior"] == "whitelist"
    # The handshake (Sec-WebSocket-Key and -Version are what CloudFront needs), the Origin
    # the listener checks, the function's two (a header it adds reaches the origin only
    # if listed); no Cookie, no Authorization, no Host (the origin's own is sent).
    assert {h.lower() for h in headers["Headers"]} == {
        "origin", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
        "sec-websocket-protocol", VIEWER_HOST_HEADER.decode(), VIEWER_ADDRESS_HEADER.decode()}
    assert len(headers["Headers"]) == 7
    assert policy["CookiesConfig"] == {"CookieBehavior": "none"}
    assert policy["QueryStringsConfig"] == {"QueryStringBehavior": "all"}  # the ticket
    name = evaluate(policy["Name"], cfn)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", name), name


def test_the_function_url_origin_waits_long_enough_for_a_wake(cfn: dict[str, Any]) -> None:
    edge = evaluate(origin(cfn, "edge"), cfn)
    assert edge["DomainName"] == "abc123.lambda-url.us-east-1.on.aws"  # no scheme, no slash
    custom = edge["CustomOriginConfig"]
    assert custom["OriginProtocolPolicy"] == "https-only"
    assert custom["OriginSSLProtocols"] == ["TLSv1.2"]
    # 1-120 s (docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/
    # aws-properties-cloudfront-distribution-customoriginconfig.html): longer than the
    # edge holds a waking request, and than an event stream may stay silent.
    assert Settings().wake_wait + 30 <= custom["OriginReadTimeout"] <= 120
    assert SILENCE < custom["OriginReadTimeout"]
    assert 1 <= custom["OriginKeepaliveTimeout"] <= 60
    assert "VpcOriginConfig" not in edge and "S3OriginConfig" not in edge


def test_the_vpc_origin_is_the_instance_on_the_terminal_port(
        cfn: dict[str, Any], sam_template: dict[str, Any]) -> None:
    vpc_origin, = resources(cfn, "AWS::CloudFront::VpcOrigin").values()
    endpoint = vpc_origin["Properties"]["VpcOriginEndpointConfig"]
    assert endpoint["Arn"] == {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:"
                                          "${AWS::AccountId}:instance/${Host}"}
    assert endpoint["OriginProtocolPolicy"] == "http-only"
    port = sam_template["Mappings"]["Terminal"]["Container"]["Port"]
    assert evaluate(endpoint["HTTPPort"], cfn) == port == 8081
    assert port not in (Settings().gate_port, Settings().port)
    assert len(evaluate(endpoint["Name"], cfn)) <= 64
    terminal = origin(cfn, "terminal")
    assert terminal["DomainName"] == {"Fn::GetAtt": ["Host", "PrivateDnsName"]}
    assert terminal["VpcOriginConfig"] == {"VpcOriginId": {"Fn::GetAtt": ["TerminalOrigin", "Id"]}}
    assert "CustomOriginConfig" not in terminal


def test_both_behaviours_run_the_viewer_request_function(cfn: dict[str, Any]) -> None:
    config = cfn["Resources"]["Distribution"]["Properties"]["DistributionConfig"]
    for behaviour in (config["DefaultCacheBehavior"], *config["CacheBehaviors"]):
        assert behaviour["FunctionAssociations"] == [
            {"EventType": "viewer-request",
             "FunctionARN": {"Fn::GetAtt": ["ViewerRequestFunction", "FunctionARN"]}}]
    function = cfn["Resources"]["ViewerRequestFunction"]["Properties"]
    assert function["FunctionConfig"]["Runtime"] == "cloudfront-js-2.0"
    assert function["AutoPublish"] is True
    name = evaluate(function["Name"], cfn)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name), name


def test_the_secret_goes_to_both_origins_and_the_streaming_edge_only(
        cfn: dict[str, Any]) -> None:
    for origin_id in ("edge", "terminal"):
        assert origin(cfn, origin_id)["OriginCustomHeaders"] == [
            {"HeaderName": ORIGIN_SECRET_HEADER.decode(), "HeaderValue": SECRET}]
    holders = {name for name, f in resources(cfn, "AWS::Lambda::Function").items()
               if "OCEDGE_ORIGIN_SECRET" in f["Properties"].get("Environment", {})
               .get("Variables", {})}
    # Not the API front door: API Gateway is not behind CloudFront, and with the secret
    # set the edge would refuse every request it gets.
    assert holders == {"EdgeStreamFunction"}
    stream = cfn["Resources"]["EdgeStreamFunction"]["Properties"]["Environment"]["Variables"]
    assert stream["OCEDGE_ORIGIN_SECRET"] == SECRET
    assert Settings.from_env({"OCEDGE_ORIGIN_SECRET": evaluate(SECRET, cfn)}).origin_secret
    # The host gets it through the user data; nothing else holds it.
    user_data = cfn["Resources"]["Host"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    assert "OCEDGE_ORIGIN_SECRET=${OriginSecret.Value}" in user_data
    mentions = {name for name, r in cfn["Resources"].items() if "OriginSecret" in
                depends_on(cfn, name)}
    assert mentions == {"EdgeStreamFunction", "Distribution", "Host"}


def test_the_terminal_port_is_admitted_from_cloudfronts_vpc_origin_only(
        cfn: dict[str, Any]) -> None:
    rule, = resources(cfn, "AWS::EC2::SecurityGroupIngress").values()
    props = rule["Properties"]
    assert props["GroupId"] == {"Fn::GetAtt": ["HostSecurityGroup", "GroupId"]}
    assert (props["IpProtocol"], props["FromPort"], props["ToPort"]) == (
        "tcp", {"Fn::FindInMap": ["Terminal", "Container", "Port"]},
        {"Fn::FindInMap": ["Terminal", "Container", "Port"]})
    assert props["SourceSecurityGroupId"] == {"Fn::GetAtt": ["TerminalOriginGroup", "GroupId"]}
    assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(props)
    lookup = cfn["Resources"]["TerminalOriginGroup"]["Properties"]
    assert lookup["VpcId"] == {"Ref": "Vpc"} and lookup["GroupName"] == VPC_ORIGIN_GROUP
    # Looked up after CloudFront made the group, which it does with the VPC origin.
    assert lookup["VpcOriginId"] == {"Fn::GetAtt": ["TerminalOrigin", "Id"]}
    # The gate's rule is the group's only inline one; the terminal's port is not there.
    group = cfn["Resources"]["HostSecurityGroup"]["Properties"]
    assert [r["FromPort"] for r in group["SecurityGroupIngress"]] == [
        {"Fn::FindInMap": ["Gate", "Container", "Port"]}]


def test_the_instance_stays_in_its_public_subnet_and_the_vpc_keeps_its_gateway(
        cfn: dict[str, Any]) -> None:
    # The edge's TLS gate needs the public address and egress has no NAT gateway; a VPC
    # origin needs an internet gateway in the VPC (private-content-vpc-origins.html).
    host = cfn["Resources"]["Host"]["Properties"]
    assert host["SubnetId"] == {"Ref": "PublicSubnet"}
    assert cfn["Resources"]["PublicSubnet"]["Properties"]["MapPublicIpOnLaunch"] is True
    assert resources(cfn, "AWS::EC2::VPCGatewayAttachment")


def test_no_dependency_cycle_and_the_instance_never_waits_for_the_distribution(
        cfn: dict[str, Any]) -> None:
    assert dependency_cycle(cfn) is None

    def reach(name: str) -> set[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            for other in depends_on(cfn, todo.pop()) - seen:
                seen.add(other)
                todo.append(other)
        return seen

    assert "Distribution" not in reach("Host")
    assert "Distribution" not in reach("EdgeStreamFunction")
    assert {"TerminalOrigin", "Host", "OriginSecret", "ViewerRequestFunction"} <= \
        reach("Distribution")
    assert "TerminalOrigin" in reach("TerminalIngress")


def test_the_evaluator_finds_a_cycle() -> None:
    template = {"Resources": {
        "A": {"Type": "X", "Properties": {"P": {"Fn::GetAtt": ["B", "Id"]}}},
        "B": {"Type": "X", "Properties": {"P": {"Fn::Sub": "${C.Arn}"}}},
        "C": {"Type": "X", "DependsOn": "A"},
        "D": {"Type": "X", "Properties": {"P": {"Ref": "A"}}}}}
    assert dependency_cycle(template) == ["A", "B", "C", "A"]
    del template["Resources"]["C"]["DependsOn"]
    assert dependency_cycle(template) is None


# ---------------------------------------------------------------- your own domain

def container_public_url(template: dict[str, Any], **params: str) -> str:
    names = template["Resources"]["Host"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][1]
    return str(evaluate(names["ContainerPublicUrl"], template, params))


def test_without_a_domain_the_distribution_has_its_own_name_and_certificate(
        cfn: dict[str, Any]) -> None:
    config = distribution(cfn)
    assert "Aliases" not in config
    assert config["ViewerCertificate"] == {"CloudFrontDefaultCertificate": True}
    assert evaluate(cfn["Outputs"]["WebUrl"]["Value"], cfn) == \
        "https://d111111abcdef8.cloudfront.net/"
    # The container cannot learn the distribution's name (a cycle): PublicUrl, if given.
    assert container_public_url(cfn) == ""
    assert container_public_url(cfn, PublicUrl="https://d111111abcdef8.cloudfront.net") == \
        "https://d111111abcdef8.cloudfront.net"


def test_with_a_domain_the_distribution_answers_to_it_with_its_certificate(
        cfn: dict[str, Any]) -> None:
    arn = "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    params = {"DomainName": "code.example.com", "CertificateArn": arn,
              "PublicUrl": "https://ignored.example.com"}
    config = distribution(cfn, **params)
    assert config["Aliases"] == ["code.example.com"]
    assert config["ViewerCertificate"] == {"AcmCertificateArn": arn, "SslSupportMethod": "sni-only",
                                           "MinimumProtocolVersion": "TLSv1.2_2021"}
    assert evaluate(cfn["Outputs"]["WebUrl"]["Value"], cfn, params) == "https://code.example.com/"
    api = cfn["Resources"]["EdgeApiFunction"]["Properties"]["Environment"]["Variables"]
    assert evaluate(api["OCEDGE_STREAM_URL"], cfn, params) == "https://code.example.com/"
    public = container_public_url(cfn, **params)
    assert public == "https://code.example.com"
    assert Settings.from_env({"OCEDGE_PUBLIC_URL": public}).public_url
    assert cfn["Outputs"]["DistributionDomain"]["Value"] == \
        {"Fn::GetAtt": ["Distribution", "DomainName"]}


def test_a_domain_needs_its_certificate_from_us_east_1(sam_template: dict[str, Any]) -> None:
    arn = "arn:aws:acm:us-east-1:123456789012:certificate/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert refused(sam_template) == []
    assert refused(sam_template, DomainName="code.example.com", CertificateArn=arn) == []
    alone, = refused(sam_template, DomainName="code.example.com")
    assert "CertificateArn" in alone
    assert refused(sam_template, CertificateArn=arn) == [alone]
    # CloudFront takes certificates from us-east-1 only (docs.aws.amazon.com/
    # AmazonCloudFront/latest/DeveloperGuide/cnames-and-https-requirements.html).
    params = sam_template["Parameters"]
    certificate = re.compile(params["CertificateArn"]["AllowedPattern"])
    assert certificate.fullmatch(arn) and certificate.fullmatch("")
    assert not certificate.fullmatch(arn.replace("us-east-1", "eu-west-1"))
    domain = re.compile(params["DomainName"]["AllowedPattern"])
    for good in ("code.example.com", "a.b.example.co.uk", ""):
        assert domain.fullmatch(good), good
    for bad in ("https://code.example.com", "Code.Example.com", "localhost", "a..b", "-a.com"):
        assert not domain.fullmatch(bad), bad


# ---------------------------------------------------------------- the viewer-request function

# Runs the function's code as CloudFront would: `handler(event)`, which returns the request.
NODE_RUNNER = """
const vm = require('vm');
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const handler = vm.runInNewContext(input.code + '\\n;handler', {});
Promise.all(input.events.map((event) => handler(event))).then(
    (requests) => process.stdout.write(JSON.stringify(requests)));
"""


def viewer_event(headers: dict[str, str | list[str]], ip: str = "198.51.100.7") -> dict[str, Any]:
    """A viewer-request event (docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/
    functions-event-structure.html): lower-case header names, {value, multiValue}."""
    def header(value: str | list[str]) -> dict[str, Any]:
        values = value if isinstance(value, list) else [value]
        entry: dict[str, Any] = {"value": values[0]}
        if len(values) > 1:
            entry["multiValue"] = [{"value": v} for v in values]
        return entry

    return {"version": "1.0",
            "context": {"distributionDomainName": "d111111abcdef8.cloudfront.net",
                        "distributionId": "EDFDVBD6EXAMPLE", "eventType": "viewer-request",
                        "requestId": "4TyzHTaYWb1GX1qTfsHhEqV6HUDd_BzoBZnwfnvQc_1oF26ClkoUSEQ=="},
            "viewer": {"ip": ip},
            "request": {"method": "GET", "uri": "/pty/pty_1/connect",
                        "querystring": {"ticket": {"value": "t1"}},
                        "headers": {name: header(v) for name, v in headers.items()},
                        "cookies": {"__Host-ocedge": {"value": "c"}}}}


def run_function(code: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = tool("node", "node 20 from the distribution or nodejs.org")
    result = run([node, "-e", NODE_RUNNER], input=json.dumps({"code": code, "events": events}))
    assert result.returncode == 0, result.stderr
    requests: list[dict[str, Any]] = json.loads(result.stdout)
    return requests


@pytest.fixture(scope="module")
def shipped_function(sam_template: dict[str, Any]) -> str:
    """The function's code as the template ships it, which is the file in deploy/."""
    code: str = sam_template["Resources"]["ViewerRequestFunction"]["Properties"]["FunctionCode"]
    assert code == render.viewer_request(), "run `python deploy/render.py`"
    assert len(code.encode()) <= render.FUNCTION_LIMIT
    return code


HOST, ADDRESS = VIEWER_HOST_HEADER.decode(), VIEWER_ADDRESS_HEADER.decode()


def test_the_function_copies_the_viewers_host_and_address(shipped_function: str) -> None:
    headers: dict[str, str | list[str]] = {
        "host": "d111111abcdef8.cloudfront.net", "origin": "https://d111111abcdef8.cloudfront.net",
        "upgrade": "websocket", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "authorization": "Bearer oce_x_y", "accept": ["text/html", "application/json"]}
    plain, six = run_function(shipped_function, [
        viewer_event(headers), viewer_event(headers, ip="2001:db8::7")])
    assert plain["headers"][HOST] == {"value": "d111111abcdef8.cloudfront.net"}
    assert plain["headers"][ADDRESS] == {"value": "198.51.100.7"}
    assert six["headers"][ADDRESS] == {"value": "2001:db8::7"}
    # Everything else as the viewer sent it.
    before = viewer_event(headers)["request"]
    assert {k: v for k, v in plain["headers"].items() if k not in (HOST, ADDRESS)} == \
        before["headers"]
    assert {k: plain[k] for k in ("method", "uri", "querystring", "cookies")} == \
        {k: before[k] for k in ("method", "uri", "querystring", "cookies")}


def test_a_viewer_cannot_choose_the_host_address_or_secret_the_origins_see(
        shipped_function: str) -> None:
    forged, doubled, hostless = run_function(shipped_function, [
        viewer_event({"host": "code.example.com", HOST: "evil.example",
                      ADDRESS: "127.0.0.1", ORIGIN_SECRET_HEADER.decode(): "guess"}),
        viewer_event({"host": "code.example.com", HOST: ["evil.example", "code.example.com"],
                      ADDRESS: ["127.0.0.1", "10.0.0.1"]}, ip="203.0.113.9"),
        viewer_event({HOST: "evil.example"})])
    for request in (forged, doubled):
        assert request["headers"][HOST] == {"value": "code.example.com"}  # no multiValue left
    assert forged["headers"][ADDRESS] == {"value": "198.51.100.7"}
    assert doubled["headers"][ADDRESS] == {"value": "203.0.113.9"}
    # The secret is CloudFront's to add (an origin custom header), never the viewer's.
    assert ORIGIN_SECRET_HEADER.decode() not in forged["headers"]
    # No Host at all: no viewer host, and certainly not the viewer's own claim.
    assert HOST not in hostless["headers"]


# ---------------------------------------------------------------- the origin secret

@pytest.mark.unit
def test_the_origin_secret_is_made_once_kept_and_deleted(
        sam_template: dict[str, Any], aws_credentials: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    props = evaluate(sam_template["Resources"]["OriginSecret"]["Properties"], sam_template)
    assert props["Parameter"] == PARAMETER
    with mock_aws():
        ssm = boto3.client("ssm")
        resource = CustomResource(sam_template, "OriginSecretFunction", monkeypatch)
        request = resource.request

        def kept() -> dict[str, Any]:
            found: dict[str, Any] = ssm.get_parameter(Name=PARAMETER,
                                                      WithDecryption=True)["Parameter"]
            return found

        created = request("Create", props)
        value = created["data"]["Value"]
        assert (created["status"], created["physical_id"]) == ("SUCCESS", PARAMETER)
        # NoEcho: CloudFormation masks what Fn::GetAtt gives wherever it shows the resource.
        assert created["no_echo"] is True
        assert len(value) == 43 and Settings.from_env({"OCEDGE_ORIGIN_SECRET": value})
        assert (kept()["Type"], kept()["Value"]) == ("SecureString", value)
        # Deploys keep it, however many.
        for _ in range(2):
            updated = request("Update", {**props, "Rotation": "1"}, props, PARAMETER)
            assert (updated["data"], updated["physical_id"]) == ({"Value": value}, PARAMETER)
        # Deleted by hand, then a deploy that changes Rotation: a new one.
        ssm.delete_parameter(Name=PARAMETER)
        rotated = request("Update", {**props, "Rotation": "2"}, props, PARAMETER)["data"]["Value"]
        assert rotated != value and kept()["Value"] == rotated
        # The stack is deleted: so is the parameter, and a second delete is no error.
        for _ in range(2):
            deleted = request("Delete", props, physical=PARAMETER)
            assert deleted["status"] == "SUCCESS"
        assert not ssm.describe_parameters()["Parameters"]
        # A delete for what another request made (a failed create's log stream) is a no-op.
        ssm.put_parameter(Name=PARAMETER, Value="x" * 43, Type="SecureString")
        assert request("Delete", props, physical="2026/01/01/[$LATEST]abc")["status"] == "SUCCESS"
        assert kept()["Value"] == "x" * 43
        # The stack re-created under the same name finds that parameter: it does not fail,
        # and it does not reuse the old value (which may have been seen since); it says so.
        before = len(resource.printed)
        again = request("Create", props)
        assert again["status"] == "SUCCESS"
        assert again["data"]["Value"] not in ("x" * 43, value, rotated)
        assert kept()["Value"] == again["data"]["Value"]
        assert "left by an earlier stack" in resource.printed[before:]
        # A failure says why, never with the value.
        failed = request("Update", {"Parameter": "/aws/reserved/name"}, props, "/aws/reserved/name")
        assert failed["status"] == "FAILED" and "/aws/reserved/name" in failed["reason"]
    # Every value went to CloudFormation, masked (NoEcho), and none to the function's log:
    # AWS's cfnresponse would have printed each (its stand-in here prints as it does).
    made = {value, rotated, again["data"]["Value"]}
    sent = [put["body"] for put in resource.answers.received]
    assert made <= {body["Data"].get("Value") for body in sent}
    assert all(body["NoEcho"] is True for body in sent)
    for secret in made:
        assert secret not in resource.printed
        assert all(secret not in body["Reason"] for body in sent)
    assert "answered CloudFormation SUCCESS: HTTP 200" in resource.printed


@pytest.mark.unit
def test_the_origin_secret_function_may_touch_only_its_parameter(
        sam_template: dict[str, Any]) -> None:
    statements = role_statements(sam_template, "OriginSecretRole")
    own = parameter_arn(PARAMETER)
    for action in ("ssm:GetParameter", "ssm:PutParameter", "ssm:DeleteParameter"):
        assert allowed(statements, Request(action, own)), action
        for other in ("/opencode-edge/demo/edge-secrets", "/opencode-edge/demo/container-secrets",
                      "/opencode-edge/other/origin-secret"):
            assert not allowed(statements, Request(action, parameter_arn(other))), (action, other)
    for action in ("ssm:GetParametersByPath", "ssm:DescribeParameters", "ssm:LabelParameterVersion"):
        assert not allowed(statements, Request(action, own)), action
    key = "arn:aws:kms:us-east-1:123456789012:key/k"
    via = {"kms:ViaService": ["ssm.us-east-1.amazonaws.com"]}
    assert allowed(statements, Request("kms:Decrypt", key, {
        **via, "kms:EncryptionContext:PARAMETER_ARN": [own]}))
    assert not allowed(statements, Request("kms:Decrypt", key, {
        **via, "kms:EncryptionContext:PARAMETER_ARN": [
            parameter_arn("/opencode-edge/demo/edge-secrets")]}))
    assert not allowed(statements, Request("kms:Decrypt", key))


# ---------------------------------------------------------------- CloudFront's security group

@pytest.mark.unit
def test_the_lookup_finds_cloudfronts_group_in_this_vpc_only(
        sam_template: dict[str, Any], aws_credentials: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        ec2 = boto3.client("ec2")
        ours = ec2.create_vpc(CidrBlock="10.86.0.0/24")["Vpc"]["VpcId"]
        theirs = ec2.create_vpc(CidrBlock="10.87.0.0/24")["Vpc"]["VpcId"]
        for vpc in (ours, theirs):
            ec2.create_security_group(GroupName="opencode-edge-host", Description="x", VpcId=vpc)
        request = CustomResource(sam_template, "TerminalOriginGroupFunction", monkeypatch).request
        props = {"VpcId": ours, "GroupName": VPC_ORIGIN_GROUP, "VpcOriginId": "vo_1",
                 "WaitSeconds": "0"}
        # Before CloudFront made it: a clear failure (after the wait), not a guess.
        missing = request("Create", props)
        assert missing["status"] == "FAILED" and VPC_ORIGIN_GROUP in missing["reason"]
        elsewhere = ec2.create_security_group(GroupName=VPC_ORIGIN_GROUP, Description="cf",
                                              VpcId=theirs)["GroupId"]
        assert request("Create", props)["status"] == "FAILED"
        group = ec2.create_security_group(GroupName=VPC_ORIGIN_GROUP, Description="cf",
                                          VpcId=ours)["GroupId"]
        found = request("Create", props)
        assert found["status"] == "SUCCESS" and group != elsewhere
        assert (found["data"], found["physical_id"]) == ({"GroupId": group}, group)
        # A new VPC origin: looked up again (the same group here).
        assert request("Update", {**props, "VpcOriginId": "vo_2"}, props, group)["data"] == \
            {"GroupId": group}
        assert request("Delete", props, physical=group)["status"] == "SUCCESS"
        # The group is CloudFront's: the stack never deletes it.
        assert ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    template = sam_template["Resources"]["TerminalOriginGroupFunction"]["Properties"]
    assert float(evaluate(sam_template["Resources"]["TerminalOriginGroup"]["Properties"]
                          .get("WaitSeconds", 240), sam_template)) < template["Timeout"]


# ---------------------------------------------------------------- the local stand-in

def _viewer_request(path: str, *extra: str, upgrade: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: d111111abcdef8.cloudfront.net",
             "Origin: https://d111111abcdef8.cloudfront.net", "Cookie: __Host-ocedge=session",
             "Authorization: Bearer oce_x_y", "User-Agent: Chromium", "Accept-Language: en",
             f"{HOST}: evil.example", f"{ORIGIN_SECRET_HEADER.decode()}: guess", *extra]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade",
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
                  "Sec-WebSocket-Extensions: permessage-deflate"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _headers(request: bytes) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in request.decode().split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            found.setdefault(name.strip().lower(), []).append(value.strip())
    return found


@pytest.mark.unit
def test_the_local_stand_in_does_to_a_request_what_the_distribution_does() -> None:
    """tests/e2e/test_cloudfront.py trusts tests/support/cloudfront.py to be the template's
    distribution: the same routing, the same origin request policies."""
    standin = CloudFrontStandIn(edge_port=1111, terminal_port=2222, secret="s" * 43)
    # The terminal's WebSocket: only what TerminalRequestPolicy lists crosses the plain hop.
    routed = standin.origin_request(_viewer_request("/pty/pty_1/connect?ticket=t"), "203.0.113.7")
    assert isinstance(routed, tuple) and routed[0] == 2222
    sent = _headers(routed[1])
    assert sent == {
        "origin": ["https://d111111abcdef8.cloudfront.net"],
        "sec-websocket-key": ["dGhlIHNhbXBsZSBub25jZQ=="], "sec-websocket-version": ["13"],
        "sec-websocket-extensions": ["permessage-deflate"],
        HOST: ["d111111abcdef8.cloudfront.net"], ADDRESS: ["203.0.113.7"],
        ORIGIN_SECRET_HEADER.decode(): ["s" * 43], "host": ["127.0.0.1:2222"],
        "user-agent": ["Amazon CloudFront"], "upgrade": ["websocket"], "connection": ["Upgrade"]}
    assert routed[1].startswith(b"GET /pty/pty_1/connect?ticket=t HTTP/1.1\r\n")
    # Any path the pattern covers goes there, as on AWS (the listener refuses it).
    for path in ("/pty/a.b/connect", "/pty/a/b/connect"):
        assert standin.origin_request(_viewer_request(path), "203.0.113.7")[0] == 2222
    # The edge, over HTTPS: every viewer header but Host, cookie and credentials included.
    routed = standin.origin_request(_viewer_request("/pty/pty_1/connect-token", upgrade=False),
                                    "203.0.113.7")
    assert isinstance(routed, tuple) and routed[0] == 1111
    sent = _headers(routed[1])
    assert sent["cookie"] == ["__Host-ocedge=session"] and sent["authorization"]
    assert sent["user-agent"] == ["Chromium"] and sent["accept-language"] == ["en"]
    assert sent[HOST] == ["d111111abcdef8.cloudfront.net"] and sent["host"] == ["127.0.0.1:1111"]
    assert sent[ORIGIN_SECRET_HEADER.decode()] == ["s" * 43]
    assert sent["connection"] == ["close"]
    # A WebSocket anywhere else would reach a Function URL, which cannot take it.
    for path in ("/global/ws", "/PTY/pty_1/connect", "/api/pty/pty_1/connect"):
        refused = standin.origin_request(_viewer_request(path), "203.0.113.7")
        assert isinstance(refused, bytes) and refused.startswith(b"HTTP/1.1 502 ")
    assert standin.refused_upgrades == ["/global/ws", "/PTY/pty_1/connect",
                                        "/api/pty/pty_1/connect"]
    assert ("edge", "/global/ws") in standin.routed
