"""On AWS the edge reaches only a container it can verify: a running state without a
registered certificate (which anything able to write the state item could leave) is
refused with a clear 502 and never dialled over plain HTTP. Locally, plain loopback
stays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from infra.backends import backends_for_tools
from infra.credentials import hash_password, mint_api_key
from infra.interfaces import AdminUser
from infra.lifecycle import Lifecycle
from tests.support.aws import (
    MotoServer,
    aws_credentials,
    aws_settings,
    create_stack,
    moto,
    moto_server,
)
from tests.support.capture import INTERNAL_SECRET, running_capture
from tests.support.edge import make_settings, running_edge

__all__ = ["aws_credentials", "moto", "moto_server"]  # fixtures


def test_a_running_state_without_a_certificate_is_refused_on_aws(moto: MotoServer) -> None:
    deployment = create_stack(moto.client("cloudformation"), moto.client("ec2"))
    settings = aws_settings(moto.url, deployment)
    backends = backends_for_tools(settings)
    asyncio.run(backends.keys.set_admin(AdminUser("admin", hash_password("x" * 16))))
    key = mint_api_key("client", backends.pepper)
    asyncio.run(backends.keys.put_key(key.record))
    with running_capture() as impostor:
        # What a forged (or broken) state item looks like: running, a plain endpoint.
        asyncio.run(Lifecycle(backends.state, owner="forger").register_running(
            f"127.0.0.1:{impostor.port}", INTERNAL_SECRET, None, 600))
        with running_edge(settings) as edge:
            for accept in ("application/json", "text/html"):
                response = httpx.get(f"{edge.url}/session", timeout=30, headers={
                    "Authorization": f"Bearer {key.key}", "Accept": accept})
                assert response.status_code == 502
                assert "registered no TLS certificate" in response.text
                if accept == "application/json":
                    assert response.json()["error"] == "container_unverified"
        assert impostor.requests == [], "the edge dialled the container over plain HTTP"


def test_locally_plain_loopback_is_still_forwarded(state_dir: Path) -> None:
    settings = make_settings(state_dir)
    backends = backends_for_tools(settings)
    key = mint_api_key("client", backends.pepper)
    asyncio.run(backends.keys.put_key(key.record))
    with running_capture() as container:
        asyncio.run(Lifecycle(backends.state, owner="container").register_running(
            f"127.0.0.1:{container.port}", INTERNAL_SECRET, None, 600))
        with running_edge(settings) as edge:
            response = httpx.get(f"{edge.url}/session", timeout=30,
                                 headers={"Authorization": f"Bearer {key.key}"})
        assert response.status_code == 200
        assert [r.path for r in container.requests] == ["/session"]
