"""Provider keys (BYOK): sealed by `ocedge provider set`, opened only in the container,
handed to opencode with PUT /auth/{providerID} — and never written to a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from container.providers import MARKER, push_provider_keys
from infra.backends import backends_for_tools
from infra.providers import ProviderKeyError, check_provider_id, open_sealed, seal
from infra.settings import Settings
from tests.support import cli
from tests.support.capture import running_capture
from tests.support.edge import EdgeServer, make_settings
from tests.support.fake_model import FakeModelServer, opencode_config

SEALING_KEY = bytes(range(32))


def ocedge(state_dir: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The installed ocedge on ``state_dir``'s deployment."""
    return cli.ocedge(*argv, "--state-dir", str(state_dir), stdin=stdin,
                      env={"HOME": str(state_dir / "home")})


def provider_key() -> str:
    return "sk-byok-" + secrets.token_hex(20)


# -- sealing -----------------------------------------------------------------------------


def test_a_sealed_key_opens_only_with_its_sealing_key_and_provider() -> None:
    key = provider_key()
    sealed = seal(SEALING_KEY, "openai", key)
    assert key.encode() not in sealed
    assert seal(SEALING_KEY, "openai", key) != sealed  # a fresh nonce each time
    assert open_sealed(SEALING_KEY, "openai", sealed) == key
    with pytest.raises(ProviderKeyError, match="does not open") as caught:
        open_sealed(bytes(32), "openai", sealed)
    assert key not in str(caught.value)
    with pytest.raises(ProviderKeyError, match="sealed for another provider"):
        open_sealed(SEALING_KEY, "anthropic", sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ProviderKeyError, match="does not open"):
        open_sealed(SEALING_KEY, "openai", tampered)
    with pytest.raises(ProviderKeyError, match="unknown format"):
        open_sealed(SEALING_KEY, "openai", b"\x02" + sealed[1:])


@pytest.mark.parametrize("provider", ["", "../auth", "a/b", "open ai", "-x", "é", "a" * 65])
def test_provider_ids_must_be_plain_names(provider: str) -> None:
    with pytest.raises(ProviderKeyError, match="invalid provider id"):
        check_provider_id(provider)


@pytest.mark.parametrize("key", ["", "   ", "two\nlines", "tab\tinside"])
def test_a_key_must_be_one_line_of_text(key: str) -> None:
    with pytest.raises(ProviderKeyError, match="openai"):
        seal(SEALING_KEY, "openai", key)


def test_the_local_sealing_key_is_a_0600_file_made_once(state_dir: Path) -> None:
    backends = backends_for_tools(make_settings(state_dir))
    assert backends.sealing_key(create=False) is None
    key = backends.sealing_key()
    path = state_dir / "container-secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The container's document only: the edge's secrets are not made with it.
    assert not (state_dir / "edge-secrets.json").exists()
    assert backends_for_tools(make_settings(state_dir)).sealing_key(create=False) == key


def test_the_local_store_keeps_provider_credentials(state_dir: Path) -> None:
    keys = backends_for_tools(make_settings(state_dir)).keys
    asyncio.run(keys.put_provider("openai", b"one", 100.0))
    asyncio.run(keys.put_provider("openai", b"two", 200.0))
    asyncio.run(keys.put_provider("anthropic", b"three", 300.0))
    stored = asyncio.run(keys.get_provider("openai"))
    assert stored is not None and (stored.sealed, stored.created, stored.updated) == (
        b"two", 100.0, 200.0)
    assert [p.provider for p in asyncio.run(keys.list_providers())] == ["anthropic", "openai"]
    assert asyncio.run(keys.remove_provider("openai")) is True
    assert asyncio.run(keys.remove_provider("openai")) is False


# -- the CLI -----------------------------------------------------------------------------


def test_provider_set_list_remove_never_show_the_key(state_dir: Path) -> None:
    key = provider_key()
    result = ocedge(state_dir, "provider", "set", "openai", stdin=key + "\n")
    assert result.returncode == 0, result.stderr
    assert "Stored the API key for openai" in result.stdout
    listed = ocedge(state_dir, "provider", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [r["provider"] for r in rows] == ["openai"] and set(rows[0]) == {
        "provider", "created", "updated"}
    text = ocedge(state_dir, "provider", "list")
    assert "openai" in text.stdout
    for output in (result, listed, text):
        assert key not in output.stdout + output.stderr
    # Sealed at rest: the database never holds the key itself.
    assert key.encode() not in (state_dir / "ocedge.db").read_bytes()
    stored = asyncio.run(backends_for_tools(make_settings(state_dir)).keys.get_provider("openai"))
    assert stored is not None
    sealing_key = backends_for_tools(make_settings(state_dir)).sealing_key(create=False)
    assert sealing_key is not None
    assert open_sealed(sealing_key, "openai", stored.sealed) == key

    removed = ocedge(state_dir, "provider", "remove", "openai")
    assert removed.returncode == 0, removed.stderr
    again = ocedge(state_dir, "provider", "remove", "openai")
    assert again.returncode == 2 and "no key is stored for provider 'openai'" in again.stderr


def test_provider_set_refuses_bad_input_without_a_traceback(state_dir: Path) -> None:
    for argv, stdin, message in [(("../x",), "sk-1\n", "invalid provider id"),
                                 (("openai",), "\n", "the key for openai is empty")]:
        result = ocedge(state_dir, "provider", "set", *argv, stdin=stdin)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


# -- the container's push ----------------------------------------------------------------


def test_push_gives_opencode_every_key_and_forgets_removed_ones(
        state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(state_dir)
    backends = backends_for_tools(settings)
    openai, anthropic = provider_key(), provider_key()
    sealing_key = backends.sealing_key()
    assert sealing_key is not None
    asyncio.run(backends.keys.put_provider("openai", seal(sealing_key, "openai", openai), 1.0))
    asyncio.run(backends.keys.put_provider("anthropic", seal(sealing_key, "anthropic",
                                                             anthropic), 1.0))
    # A key sealed under some other deployment's key is skipped, not fatal.
    asyncio.run(backends.keys.put_provider("broken", seal(bytes(32), "broken", "sk-x"), 1.0))
    with running_capture() as upstream:
        url = f"http://127.0.0.1:{upstream.port}"
        auth = httpx.BasicAuth("opencode", "internal")
        pushed = asyncio.run(push_provider_keys(settings, backends, url, auth))
        assert sorted(pushed) == ["anthropic", "openai"]
        puts = {c.path: json.loads(c.body) for c in upstream.requests if c.method == "PUT"}
        assert puts == {"/auth/openai": {"type": "api", "key": openai},
                        "/auth/anthropic": {"type": "api", "key": anthropic}}
        assert all(c.header("authorization") == auth._auth_header for c in upstream.requests)
        assert upstream.last().path == "/global/dispose"
        # The container's own file, not in opencode's (the agent's) data directory.
        marker = settings.state_dir / MARKER
        assert json.loads(marker.read_text()) == ["anthropic", "broken", "openai"]

        upstream.requests.clear()
        assert asyncio.run(backends.keys.remove_provider("openai"))
        assert asyncio.run(backends.keys.remove_provider("broken"))
        asyncio.run(push_provider_keys(settings, backends, url, auth))
        calls = [(c.method, c.path) for c in upstream.requests]
        assert ("DELETE", "/auth/openai") in calls and ("DELETE", "/auth/broken") in calls
        assert ("PUT", "/auth/anthropic") in calls
        assert json.loads(marker.read_text()) == ["anthropic"]
    logged = caplog.text
    assert "broken" in logged  # the failure is reported, by provider id
    assert openai not in logged and anthropic not in logged
    assert openai not in marker.read_text()


def test_push_with_no_keys_stored_does_nothing(state_dir: Path) -> None:
    settings = make_settings(state_dir)
    with running_capture() as upstream:
        pushed = asyncio.run(push_provider_keys(
            settings, backends_for_tools(settings), f"http://127.0.0.1:{upstream.port}",
            httpx.BasicAuth("opencode", "x")))
        assert pushed == [] and upstream.requests == []
    # Nor did it make a sealing key nobody asked for.
    assert not (state_dir / "container-secrets.json").exists()


# -- end to end: CLI → sealed → container → opencode → model -----------------------------


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def _environments(root_pid: int) -> dict[int, bytes]:
    from container.child import descendants

    found = {}
    for pid in [root_pid, *descendants(root_pid)]:
        try:
            found[pid] = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
    return found


@pytest.mark.opencode
def test_byok_key_reaches_the_model_and_never_a_log(
        state_dir: Path, opencode_bin: str, fake_model: FakeModelServer,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    key = provider_key()
    # The fake provider's config carries no apiKey: only the stored key can reach it.
    settings: Settings = make_settings(state_dir, log_level="DEBUG").with_overrides(
        opencode_env={"OPENCODE_CONFIG_CONTENT": json.dumps(
            opencode_config(fake_model.base_url, api_key=None))})

    cli = ocedge(state_dir, "provider", "set", "fake", stdin=key + "\n")
    assert cli.returncode == 0, cli.stderr
    cli_output = cli.stdout + cli.stderr

    # The real container (`python -m container`, the local compute's command) pushes
    # the provider keys to opencode before it registers.
    edge = EdgeServer(settings)
    edge.start()
    environments: dict[int, bytes] = {}
    try:
        api_key = edge.create_key("byok")
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=edge.url, headers=headers, trust_env=False,
                          timeout=120) as client:
            deadline = time.monotonic() + 120
            while True:
                response = client.post("/session", json={})
                if response.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert response.status_code == 200, response.text
            session = response.json()["id"]
            pid = int((state_dir / "container.pid").read_text())
            environments = _environments(pid)
            reply = client.post(f"/session/{session}/message", json={
                "parts": [{"type": "text", "text": "byok probe: who pays for this?"}]})
            assert reply.status_code == 200, reply.text
    finally:
        edge.stop()

    seen = [r for r in fake_model.chat_requests() if "byok probe" in json.dumps(r["body"])]
    assert seen, "the prompt never reached the model"
    assert {r["headers"].get("authorization") for r in seen} == {f"Bearer {key}"}

    # Never in a log, an environment, or any file of ours; opencode's own auth.json
    # (its credential store, on local disk) is the one place it is kept.
    assert key not in cli_output
    captured = capfd.readouterr()
    assert key not in captured.out + captured.err + caplog.text
    container_log = (state_dir / "container.log").read_text()
    assert "provider keys given to opencode: fake" in container_log
    assert key not in container_log
    assert environments and all(key.encode() not in env for env in environments.values())
    holders = _files_containing(state_dir, key.encode())
    assert [p.name for p in holders] == ["auth.json"], holders
    assert holders[0].is_relative_to(settings.opencode_data)
