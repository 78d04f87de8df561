"""The throttle counts by the address the front door saw, never by one the client
wrote: a spoofed X-Forwarded-For neither buys an attacker fresh guesses nor locks the
owner out — through Mangum with API Gateway's event shapes, and through uvicorn as
Lambda Web Adapter runs it (the adapter's x-amzn-request-context header)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.lambda_api import build_handler
from infra.backends import backends_for_tools
from infra.credentials import mint_api_key
from tests.support.edge import ADMIN_PASSWORD, make_settings, running_edge

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ATTACKER = "203.0.113.66"
OWNER = "198.51.100.7"


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


def _event(source_ip: str, forwarded_for: str, password: str) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event for GET /_edge/status."""
    event: dict[str, Any] = copy.deepcopy(
        json.loads((FIXTURES / "apigw_v2_get.json").read_text()))
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/_edge/status"
    event["rawQueryString"] = ""
    event.pop("queryStringParameters", None)
    event["requestContext"]["http"]["sourceIp"] = source_ip
    # API Gateway appends the source address to whatever the client sent.
    event["headers"]["x-forwarded-for"] = f"{forwarded_for}, {source_ip}"
    event["headers"]["authorization"] = _basic(password)
    return event


class _Context:
    function_name = "edge-api"
    aws_request_id = "test-request"


def test_api_gateway_spoofed_forwarded_for_neither_bypasses_nor_locks_out(
        state_dir: Path) -> None:
    settings = make_settings(state_dir, auth_max_failures=3, trust_forwarded=True,
                             cookie_secure="true")
    backends = backends_for_tools(settings)
    key = mint_api_key("owner", backends.pepper)
    asyncio.run(backends.keys.put_key(key.record))
    handler = build_handler(settings)

    def status(event: dict[str, Any]) -> int:
        return int(handler(event, _Context())["statusCode"])

    # The attacker rotates X-Forwarded-For, and claims to be the owner too.
    for n in range(3):
        assert status(_event(ATTACKER, f"192.0.2.{n}", f"guess-{n}")) == 401
    assert status(_event(ATTACKER, "192.0.2.99", ADMIN_PASSWORD)) == 429
    assert status(_event(ATTACKER, OWNER, ADMIN_PASSWORD)) == 429
    # The owner, at their own address, is not locked out by what the attacker wrote.
    assert status(_event(OWNER, ATTACKER, ADMIN_PASSWORD)) == 200
    # An API key is never throttled, even from the attacker's address.
    keyed = _event(ATTACKER, "192.0.2.1", "unused")
    keyed["headers"]["authorization"] = f"Bearer {key.key}"
    assert status(keyed) == 200


def _context(source_ip: str) -> str:
    # The request context as Lambda Web Adapter serialises a Function URL's.
    return json.dumps({"accountId": "123456789012", "apiId": "urlid",
                       "domainName": "urlid.lambda-url.us-east-1.on.aws",
                       "http": {"method": "GET", "path": "/_edge/status", "protocol": "HTTP/1.1",
                                "sourceIp": source_ip, "userAgent": "curl/8.5.0"},
                       "requestId": "r", "time": "21/Nov/2026:19:03:58 +0000"})


@pytest.mark.parametrize("web_adapter", [True, False],
                         ids=["under-the-adapter", "without-the-adapter"])
def test_function_url_client_address_comes_from_the_adapter_s_request_context(
        state_dir: Path, web_adapter: bool) -> None:
    settings = make_settings(state_dir, auth_max_failures=3, trust_forwarded=True,
                             web_adapter=web_adapter)
    with running_edge(settings) as edge, \
            httpx.Client(base_url=edge.url, trust_env=False, timeout=30) as client:
        def status(source_ip: str, forwarded_for: str, password: str) -> int:
            headers = {"Authorization": _basic(password),
                       "X-Forwarded-For": f"{forwarded_for}, {source_ip}",
                       "X-Amzn-Request-Context": _context(source_ip)}
            return client.get("/_edge/status", headers=headers).status_code

        for n in range(3):
            assert status(ATTACKER, f"192.0.2.{n}", f"guess-{n}") == 401
        assert status(ATTACKER, OWNER, ADMIN_PASSWORD) == 429
        # Under the adapter the header is its own (it replaces a client's copy), so the
        # owner's context is the owner. Without the adapter a client wrote it: the
        # edge counts by the proxy's last X-Forwarded-For hop, which here is the same.
        assert status(OWNER, ATTACKER, ADMIN_PASSWORD) == 200
