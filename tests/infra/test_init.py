"""`ocedge init --stack NAME`: an AWS-backed edge goes from "not initialised" (503 to
everything) to working with the admin password and the first API key init printed.

The edge runs under uvicorn on aiobotocore, the CLI in its own process on boto3,
both against one moto server holding the stack, its tables and its instance.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from infra.aws.client import AioApi
from infra.backends import backends_for_tools
from infra.settings import Settings
from tests.support import cli
from tests.support.aws import (
    CONTAINER_SECRETS_PARAMETER,
    FAKE_CREDENTIALS,
    REGION,
    SECRETS_PARAMETER,
    WEB_URL,
    Deployment,
    MotoServer,
    aws_credentials,
    aws_settings,
    create_stack,
    moto,
    moto_server,
)
from tests.support.edge import EdgeServer, running_edge

__all__ = ["aws_credentials", "moto", "moto_server"]  # fixtures

PASSWORD = "correct horse battery staple"
KEY_RE = re.compile(r"oce_[0-9A-Za-z]+_[0-9A-Za-z]+")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def ocedge(moto: MotoServer, *argv: str, stdin: str = "",
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed ocedge in its own process, as a user runs it against the stack."""
    return cli.ocedge(*argv, stdin=stdin, timeout=120, env={
        **FAKE_CREDENTIALS, "OCEDGE_AWS_ENDPOINT": moto.url, "OCEDGE_AWS_REGION": REGION,
        **(env or {})})


def get(edge: EdgeServer, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=edge.url, trust_env=False, timeout=30) as client:
        return client.get(path, headers=headers)


@pytest.fixture
def deployment(moto: MotoServer) -> Deployment:
    return create_stack(moto.client("cloudformation"), moto.client("ec2"))


@pytest.fixture
def aws_edge(moto: MotoServer, deployment: Deployment) -> Iterator[EdgeServer]:
    """The edge as the Lambda runs it: AWS backends on aiobotocore, names from its env."""
    with running_edge(aws_settings(moto.url, deployment)) as server:
        assert isinstance(server.edge.backends.api, AioApi)
        yield server
        # Until Edge.aclose closes its backends: close the clients on the edge's loop.
        server.run(server.edge.backends.aclose())


def test_init_takes_the_edge_from_not_initialised_to_working(
        moto: MotoServer, deployment: Deployment, aws_edge: EdgeServer) -> None:
    fake_key = "oce_AAAAAAAAAAAA_" + "B" * 43
    for path, headers in [("/", None), ("/session", basic("admin", PASSWORD)),
                          ("/global/health", {"Authorization": f"Bearer {fake_key}"}),
                          ("/_edge/status", basic("admin", PASSWORD))]:
        response = get(aws_edge, path, headers)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"] == "not_initialised"
        assert "ocedge init" in response.json()["message"]

    result = ocedge(moto, "init", "--stack", deployment.stack, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    keys = KEY_RE.findall(result.stdout)
    assert len(keys) == 1, result.stdout
    assert WEB_URL in result.stdout

    status = get(aws_edge, "/_edge/status", basic("admin", PASSWORD))
    assert status.status_code == 200 and status.json()["status"] == "stopped"
    assert get(aws_edge, "/_edge/status", {"Authorization": f"Bearer {keys[0]}"}
               ).status_code == 200
    assert get(aws_edge, "/_edge/status", basic("admin", "not the password")).status_code == 401
    assert get(aws_edge, "/_edge/status", {"Authorization": f"Bearer {fake_key}"}
               ).status_code == 401

    for name in (SECRETS_PARAMETER, CONTAINER_SECRETS_PARAMETER):
        parameter = moto.client("ssm").get_parameter(Name=name)["Parameter"]
        assert parameter["Type"] == "SecureString"

    # The ordinary CLI finds the same deployment from OCEDGE_STACK alone.
    listed = ocedge(moto, "keys", "list", "--json", env={"OCEDGE_STACK": deployment.stack})
    assert listed.returncode == 0, listed.stderr
    assert [k["name"] for k in json.loads(listed.stdout)] == ["first key (ocedge init)"]
    assert keys[0] not in listed.stdout


def test_init_again_changes_the_password_but_keeps_keys_and_secrets(
        moto: MotoServer, deployment: Deployment, aws_edge: EdgeServer) -> None:
    first = ocedge(moto, "init", "--stack", deployment.stack, stdin=PASSWORD + "\n")
    assert first.returncode == 0, first.stderr
    key = KEY_RE.findall(first.stdout)[0]

    again = ocedge(moto, "init", "--stack", deployment.stack, "--json",
                   stdin="another long admin password\n")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["api_key"] is None and report["secrets_created"] is False
    assert report["secrets"] == f"{SECRETS_PARAMETER} and {CONTAINER_SECRETS_PARAMETER}"
    assert report["web_url"] == WEB_URL

    assert get(aws_edge, "/_edge/status", {"Authorization": f"Bearer {key}"}).status_code == 200
    assert get(aws_edge, "/_edge/status",
               basic("admin", "another long admin password")).status_code == 200
    assert get(aws_edge, "/_edge/status", basic("admin", PASSWORD)).status_code == 401


def test_init_refuses_a_short_password_and_leaves_the_edge_closed(
        moto: MotoServer, deployment: Deployment, aws_edge: EdgeServer) -> None:
    result = ocedge(moto, "init", "--stack", deployment.stack, stdin="short\n")
    assert result.returncode == 2
    assert "at least 12 characters" in result.stderr and "Traceback" not in result.stderr
    assert get(aws_edge, "/_edge/status", basic("admin", "short")).status_code == 503


def test_init_with_an_unknown_stack_says_so(moto: MotoServer) -> None:
    result = ocedge(moto, "init", "--stack", "no-such-stack", stdin=PASSWORD + "\n")
    assert result.returncode == 2
    assert "no CloudFormation stack named 'no-such-stack'" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_with_a_missing_table_names_it(moto: MotoServer, deployment: Deployment) -> None:
    moto.client("dynamodb").delete_table(TableName=deployment.state_table)
    result = ocedge(moto, "init", "--stack", deployment.stack, stdin=PASSWORD + "\n")
    assert result.returncode == 2
    assert f"'{deployment.state_table}' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_works_locally_too(tmp_path: os.PathLike[str]) -> None:
    state_dir = os.path.join(tmp_path, "state")
    result = cli.ocedge("init", "--state-dir", state_dir, stdin=PASSWORD + "\n",
                        env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert len(KEY_RE.findall(result.stdout)) == 1
    settings = Settings.from_env({"OCEDGE_STATE_DIR": state_dir})
    assert asyncio.run(backends_for_tools(settings).keys.get_admin()) is not None
