"""The buffered front door starts the edge once per cold start: two invocations of the
real Mangum handler, on the AWS backends against a moto server, share one set of
aiobotocore clients, and nothing is shut down between them."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from edge.app import create_app
from edge.lambda_api import build_handler
from infra.aws.client import AioApi
from tests.support.aws import (
    Deployment,
    MotoServer,
    aws_credentials,
    aws_settings,
    create_stack,
    moto,
    moto_server,
)

__all__ = ["aws_credentials", "moto", "moto_server"]  # fixtures

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class _Context:
    function_name = "edge-api"
    aws_request_id = "test-request"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every aiobotocore client any AioApi creates, by service."""
    services: list[str] = []
    create = AioApi._create

    def counting(self: AioApi, service: str) -> Any:
        services.append(service)
        return create(self, service)

    monkeypatch.setattr(AioApi, "_create", counting)
    return services


def _in_a_fresh_thread(work: Any) -> Any:
    """Run ``work`` as Lambda's runtime runs a handler: on a thread that has no event
    loop yet (pytest's own thread may have one set)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_two_invocations_share_one_set_of_clients_and_one_start_up(
        moto: MotoServer, opened: list[str]) -> None:
    deployment: Deployment = create_stack(moto.client("cloudformation"), moto.client("ec2"))
    settings = aws_settings(moto.url, deployment, stream_url="https://stream.example.test/")
    event: dict[str, Any] = json.loads((FIXTURES / "apigw_v2_get.json").read_text())

    def cold_start_then_two_requests() -> tuple[list[int], list[str], bool]:
        edge = create_app(settings)
        started = []
        original = edge.startup

        async def counted_startup() -> None:
            started.append(1)
            await original()

        edge.startup = counted_startup  # type: ignore[method-assign]
        handler = build_handler(settings, edge)
        after_cold_start = list(opened)
        statuses = [handler(copy.deepcopy(event), _Context())["statusCode"] for _ in range(2)]
        # The clients opened at the cold start serve both requests; none was closed.
        assert opened == after_cold_start and len(started) == 1, (opened, started)
        api = edge.backends.api
        assert isinstance(api, AioApi)
        still_open = api._stack is not None
        loop = asyncio.get_event_loop()
        loop.run_until_complete(edge.aclose())
        loop.close()
        return statuses, after_cold_start, still_open

    statuses, clients, still_open = _in_a_fresh_thread(cold_start_then_two_requests)
    # Not initialised (no admin yet): each answer needed the keys table.
    assert statuses == [503, 503]
    assert sorted(clients) == ["dynamodb", "ec2"]
    assert still_open
