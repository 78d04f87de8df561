"""The Lambda front doors: Mangum behind API Gateway (buffered) and uvicorn as
Lambda Web Adapter runs it (streaming). The app does not know which runs it."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.lambda_api import build_handler
from infra.backends import backends_for_tools
from infra.credentials import mint_api_key
from infra.lifecycle import Lifecycle
from infra.net import free_port
from tests.support.capture import (
    INTERNAL_SECRET,
    CaptureServer,
    event_arrivals,
    running_capture,
)
from tests.support.edge import ADMIN_PASSWORD, make_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROOT = Path(__file__).resolve().parents[2]
STREAM_URL = "https://abc.lambda-url.us-east-1.on.aws/"


def _event(name: str, **headers: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((FIXTURES / f"apigw_v2_{name}.json").read_text())
    event = copy.deepcopy(event)
    event["headers"].update(headers)
    return event


class _Context:
    function_name = "edge-api"
    aws_request_id = "test-request"


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with running_capture() as server:
        yield server


@pytest.fixture
def api(state_dir: Path, capture: CaptureServer) -> Iterator[tuple[Any, str]]:
    """The Mangum handler over local backends, with the capture server as container."""
    settings = make_settings(state_dir, stream_url=STREAM_URL, trust_forwarded=True,
                             cookie_secure="true")
    backends = backends_for_tools(settings)
    new = mint_api_key("api", backends.pepper)
    asyncio.run(backends.keys.put_key(new.record))
    asyncio.run(Lifecycle(backends.state, owner="test").register_running(
        f"127.0.0.1:{capture.port}", INTERNAL_SECRET, None, 600))
    yield build_handler(settings), new.key


def test_api_gateway_request_without_credentials_is_refused(api: tuple[Any, str],
                                                            capture: CaptureServer) -> None:
    handler, _ = api
    result = handler(_event("get"), _Context())
    assert result["statusCode"] == 401
    headers = {k.lower(): v for k, v in result["headers"].items()}
    assert headers["www-authenticate"].startswith('Basic realm="opencode-edge"')
    assert capture.requests == []


def test_api_gateway_get_is_forwarded_with_the_query(api: tuple[Any, str],
                                                     capture: CaptureServer) -> None:
    handler, key = api
    result = handler(_event("get", authorization=f"Bearer {key}"), _Context())
    assert result["statusCode"] == 200, result
    seen = capture.last("/session")
    assert seen.query == "limit=5&q=a%20b"
    assert seen.header("authorization") == "Basic " + base64.b64encode(
        f"opencode:{INTERNAL_SECRET}".encode()).decode()
    assert key not in json.dumps(seen.headers)
    assert seen.header("x-forwarded-proto") == "https"
    assert (seen.header("x-forwarded-for") or "").startswith("198.51.100.7")


def test_api_gateway_post_body_and_cookies_pass(api: tuple[Any, str],
                                                capture: CaptureServer) -> None:
    handler, key = api
    result = handler(_event("post", **{"x-api-key": key}), _Context())
    assert result["statusCode"] == 200, result
    seen = capture.last("/session")
    assert seen.method == "POST"
    assert json.loads(seen.body) == {"title": "from api gw"}
    assert seen.header("cookie") == "theme=dark"
    assert seen.header("x-api-key") is None


def test_api_gateway_browser_login_gets_a_secure_host_prefixed_cookie(
        api: tuple[Any, str]) -> None:
    handler, _ = api
    browser = {"sec-fetch-mode": "navigate", "sec-fetch-site": "none",
               "accept": "text/html", "user-agent": "Mozilla/5.0"}
    # A browser is sent to the login page, never asked for Basic.
    result = handler(_event("get", **browser), _Context())
    assert result["statusCode"] == 303
    headers = {k.lower(): v for k, v in result["headers"].items()}
    assert headers["location"].startswith("/_edge/login?next=")
    assert "www-authenticate" not in headers
    # The form, posted from the edge's own page.
    event = _event("post", **browser | {
        "sec-fetch-site": "same-origin", "content-type": "application/x-www-form-urlencoded",
        "origin": "https://abc123.execute-api.us-east-1.amazonaws.com"})
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/_edge/login"
    form = f"username=admin&password={ADMIN_PASSWORD}&next=%2Fsession".encode()
    event["body"], event["isBase64Encoded"] = base64.b64encode(form).decode(), True
    event["headers"]["content-length"] = str(len(form))
    result = handler(event, _Context())
    assert result["statusCode"] == 303, result
    cookies = result.get("cookies") or [
        v for k, v in result.get("multiValueHeaders", {}).items() if k.lower() == "set-cookie"]
    cookie = next(c for c in cookies if c.startswith("__Host-ocedge_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie


def test_api_gateway_event_stream_gets_501_naming_the_streaming_url(
        api: tuple[Any, str], capture: CaptureServer) -> None:
    handler, key = api
    started = time.monotonic()
    result = handler(_event("events", authorization=f"Bearer {key}"), _Context())
    assert time.monotonic() - started < 5
    assert result["statusCode"] == 501
    body = json.loads(result["body"])
    assert body["stream_url"] == STREAM_URL and STREAM_URL in body["message"]
    assert all(r.path != "/global/event" for r in capture.requests)


def test_streaming_entry_under_uvicorn_streams_sse(state_dir: Path,
                                                   capture: CaptureServer) -> None:
    """edge/lambda_stream.sh, run the way Lambda Web Adapter runs it."""
    settings = make_settings(state_dir)
    backends = backends_for_tools(settings)
    new = mint_api_key("stream", backends.pepper)
    asyncio.run(backends.keys.put_key(new.record))
    asyncio.run(Lifecycle(backends.state, owner="test").register_running(
        f"127.0.0.1:{capture.port}", INTERNAL_SECRET, None, 600))
    port = free_port()
    env = {**settings.child_env(), "OCEDGE_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "AWS_LWA_PORT": str(port), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["sh", str(ROOT / "edge" / "lambda_stream.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:  # what LWA's readiness check does
            try:
                if httpx.get(f"{url}/_edge/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the streaming entry never became ready"
            time.sleep(0.1)
        # The readiness probe never wakes the container.
        assert not (state_dir / "launches.log").exists()
        arrivals = event_arrivals(f"{url}/global/event",
                                  headers={"Authorization": f"Bearer {new.key}"})
        assert arrivals[2] - arrivals[0] > 0.12, "events arrived together: buffered"
    finally:
        proc.terminate()
        proc.wait(10)
