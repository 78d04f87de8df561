"""`ocedge admin rotate-secrets` end to end, locally: the real edge keeps running, the
real container (`python -m container`, started by the edge) wakes after it, and the
fake model sees the provider key the container opened with the new sealing key.

Old cookies are refused, the API key made before keeps working, a new login works.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import httpx
import pytest

from infra.backends import backends_for_tools
from infra.providers import ProviderKeyError, open_sealed
from tests.support import cli
from tests.support.edge import ADMIN_PASSWORD, make_settings, running_edge
from tests.support.fake_model import FakeModelServer, opencode_config
from tests.support.login import login_cookie

pytestmark = pytest.mark.opencode


def ocedge(state_dir: Path, *argv: str, stdin: str = "") -> str:
    result = cli.ocedge(*argv, "--state-dir", str(state_dir), stdin=stdin,
                        env={"HOME": str(state_dir / "home"), "OCEDGE_KEY_CACHE_TTL": "0"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_after_a_rotation_sessions_end_keys_work_and_the_provider_key_reaches_the_model(
        state_dir: Path, opencode_bin: str, fake_model: FakeModelServer) -> None:
    provider_key = "sk-rotated-" + secrets.token_hex(16)
    # The fake provider's config carries no key: only the sealed one can reach it.
    settings = make_settings(state_dir).with_overrides(opencode_env={
        "OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(fake_model.base_url,
                                                              api_key=None))})
    ocedge(state_dir, "provider", "set", "fake", stdin=provider_key + "\n")
    sealed_before = backends_for_tools(settings).sealing_key(create=False)
    assert sealed_before is not None

    with running_edge(settings) as edge:
        api_key = edge.create_key("client")
        cookie = login_cookie(edge.url, "admin", ADMIN_PASSWORD)
        with httpx.Client(base_url=edge.url, trust_env=False, timeout=120) as client:
            assert client.get("/_edge/status", headers={"Cookie": cookie}).status_code == 200

            report = json.loads(ocedge(state_dir, "admin", "rotate-secrets", "--json"))
            assert report["providers"]["resealed"] == ["fake"]
            assert report["api_keys"]["repeppered"] == [api_key.split("_")[1]]

            # Every browser session has ended; a new login works.
            assert client.get("/_edge/status", headers={"Cookie": cookie}).status_code == 401
            fresh = login_cookie(edge.url, "admin", ADMIN_PASSWORD)
            assert client.get("/_edge/status", headers={"Cookie": fresh}).status_code == 200

            # The API key made before the rotation wakes the container and prompts.
            headers = {"Authorization": f"Bearer {api_key}"}
            deadline = time.monotonic() + 120
            while True:
                response = client.post("/session", json={}, headers=headers)
                if response.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert response.status_code == 200, response.text
            reply = client.post(f"/session/{response.json()['id']}/message", headers=headers,
                                json={"parts": [{"type": "text",
                                                 "text": "rotation probe: still my key?"}]})
            assert reply.status_code == 200, reply.text

    seen = [r for r in fake_model.chat_requests() if "rotation probe" in json.dumps(r["body"])]
    assert seen, "the prompt never reached the model"
    assert {r["headers"].get("authorization") for r in seen} == {f"Bearer {provider_key}"}
    # The stored key is sealed under the new key only.
    stored = backends_for_tools(settings)
    record = asyncio.run(stored.keys.get_provider("fake"))
    assert record is not None
    assert open_sealed(stored.sealing_keys(), "fake", record.sealed) == provider_key
    with pytest.raises(ProviderKeyError):
        open_sealed(sealed_before, "fake", record.sealed)
