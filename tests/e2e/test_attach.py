"""The opencode CLI against the edge: `opencode run --attach <edge> -p <api key>`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx

from tests.support.edge import EdgeServer
from tests.support.fake_model import FakeModelServer, reply_for


def _run(opencode_bin: str, edge: EdgeServer, key: str, prompt: str,
         home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home),
           "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data"),
           "XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache")}
    # stdin closed: `opencode run` reads piped stdin to EOF as part of the prompt.
    # One argument per word: opencode wraps an argument containing spaces in quotes.
    return subprocess.run(
        [opencode_bin, "run", "--attach", edge.url, "-p", key, "--format", "json",
         *prompt.split()],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)


def test_opencode_run_attach_with_an_api_key_gets_the_reply(
        live_edge: EdgeServer, fake_model: FakeModelServer, opencode_bin: str,
        tmp_path: Path) -> None:
    key = live_edge.create_key("cli")
    prompt = "[slow:1] attach-probe through the edge"
    result = _run(opencode_bin, live_edge, key, prompt, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events, "opencode run printed no events"
    session_id = events[0]["sessionID"]

    # opencode's attach mode exits as soon as its prompt request returns, which
    # can be before its own final text event arrives; the session holds the reply.
    auth = {"Authorization": f"Bearer {key}"}
    messages = httpx.get(f"{live_edge.url}/session/{session_id}/message", headers=auth,
                         timeout=30).json()
    texts = [part.get("text", "") for message in messages
             if message["info"]["role"] == "assistant" for part in message["parts"]]
    assert reply_for(prompt) in texts
    prompts = [json.dumps(r["body"]) for r in fake_model.chat_requests()]
    assert any("attach-probe through the edge" in p for p in prompts)


def test_opencode_run_attach_with_a_wrong_key_is_refused(
        live_edge: EdgeServer, opencode_bin: str, fake_model: FakeModelServer,
        tmp_path: Path) -> None:
    key = live_edge.create_key("cli")
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    before = len(fake_model.chat_requests())
    result = _run(opencode_bin, live_edge, wrong, "refused-probe", tmp_path)
    assert result.returncode != 0 or "sessionID" not in result.stdout
    assert not any("refused-probe" in json.dumps(r["body"])
                   for r in fake_model.chat_requests()[before:])
