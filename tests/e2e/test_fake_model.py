"""The fake model server, on its own and driven by the real opencode (no internet involved)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_model import FakeModelServer, opencode_config, reply_for, title_for
from tests.support.opencode import OpencodeHandle, find_opencode_bin, isolated_env, run_cli, start_opencode

PASSWORD = "test-password"


def _stream_chat(fm: FakeModelServer, prompt: str) -> tuple[str, list[str]]:
    """POST a streaming chat completion; returns the joined text and the raw `data:` payloads."""
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    payloads: list[str] = []
    headers = {"Authorization": "Bearer sk-test"}
    with httpx.stream("POST", f"{fm.base_url}/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                payloads.append(line[len("data: ") :])
    text = "".join(
        json.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads if p != "[DONE]"
    )
    return text, payloads


def test_streaming_reply_is_derived_from_the_prompt() -> None:
    with FakeModelServer() as fm:
        assert fm.base_url.endswith("/v1")
        text, payloads = _stream_chat(fm, "hello there")
        assert text == reply_for("hello there") == "FAKE-REPLY: hello there"
        assert payloads[-1] == "[DONE]"
        final = json.loads(payloads[-2])
        assert final["choices"][0]["finish_reason"] == "stop"
        assert final["usage"]["total_tokens"] > 0

        recorded = fm.requests()
        assert [r["path"] for r in recorded] == ["/v1/chat/completions"]
        assert recorded[0]["headers"]["authorization"] == "Bearer sk-test"
        assert recorded[0]["body"]["messages"][0]["content"] == "hello there"
        # The same record over HTTP, for tests that run the server as a subprocess.
        assert httpx.get(f"{fm.root_url}/_fake/requests").json() == recorded


def test_non_streaming_models_and_title() -> None:
    with FakeModelServer() as fm:
        long_prompt = "x" * 100
        r = httpx.post(
            f"{fm.base_url}/chat/completions",
            json={
                "model": "fake-model",
                "messages": [{"role": "user", "content": [{"type": "text", "text": long_prompt}]}],
            },
        )
        assert r.json()["choices"][0]["message"]["content"] == "FAKE-REPLY: " + "x" * 40

        # opencode's title request: a title-generator system prompt, then the conversation.
        title_body = {
            "model": "fake-model",
            "messages": [
                {"role": "system", "content": "You are a title generator. You output ONLY a thread title."},
                {"role": "user", "content": "Generate a title for this conversation:\n"},
                {"role": "user", "content": "fix the   login bug [slow:30]"},
            ],
        }
        started = time.monotonic()
        r = httpx.post(f"{fm.base_url}/chat/completions", json=title_body)
        assert r.json()["choices"][0]["message"]["content"] == title_for("fix the login bug [slow:30]")
        assert time.monotonic() - started < 5  # titles are never slowed down

        models = httpx.get(f"{fm.base_url}/models").json()
        assert [m["id"] for m in models["data"]] == ["fake-model"]

        httpx.delete(f"{fm.root_url}/_fake/requests")
        assert fm.requests() == []


def test_slow_marker_spreads_the_reply_over_time() -> None:
    with FakeModelServer() as fm:
        started = time.monotonic()
        text, payloads = _stream_chat(fm, "wait [slow:1.5]")
        elapsed = time.monotonic() - started
        assert text == reply_for("wait [slow:1.5]")
        assert 1.4 <= elapsed < 5
        assert len(payloads) > 20  # many small chunks, not one late blob


# --- the real opencode against the fake model ---------------------------------------------


@pytest.fixture(scope="module")
def fake_model() -> Iterator[FakeModelServer]:
    with FakeModelServer() as fm:
        yield fm


@pytest.fixture(scope="module")
def opencode(
    tmp_path_factory: pytest.TempPathFactory, fake_model: FakeModelServer
) -> Iterator[OpencodeHandle]:
    workdir = tmp_path_factory.mktemp("workspace")
    env = {"OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(fake_model.base_url, api_key="fake-key"))}
    with start_opencode(workdir, env, password=PASSWORD) as oc:
        yield oc


def _assistant_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [
        part["text"]
        for message in messages
        if message["info"]["role"] == "assistant"
        for part in message["parts"]
        if part["type"] == "text"
    ]


def _last_user_text(body: dict[str, Any]) -> str:
    user = [m for m in body["messages"] if m["role"] == "user"]
    content = user[-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


@pytest.mark.opencode
def test_opencode_run_attach_gets_the_fake_reply(
    opencode: OpencodeHandle, fake_model: FakeModelServer, tmp_path: Path
) -> None:
    fake_model.clear()
    with opencode.client() as client:
        before = {s["id"] for s in client.get("/session").json()}

    result = opencode.run("hello", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    # opencode sent the configured key and the prompt to the fake model (plus a title request).
    chats = fake_model.chat_requests()
    assert chats, opencode.log()
    assert {r["headers"].get("authorization") for r in chats} == {"Bearer fake-key"}
    assert any(_last_user_text(r["body"]) == "hello" for r in chats)

    # `run --attach` returns as soon as the prompt request does and may exit before its event
    # stream delivers the text (opencode 1.18.33, src/cli/cmd/run.ts), so stdout is not reliable:
    # read the reply from the session the command created.
    with opencode.client() as client:
        created = [s for s in client.get("/session").json() if s["id"] not in before]
        assert len(created) == 1
        messages = client.get(f"/session/{created[0]['id']}/message").json()
    assert _assistant_texts(messages) == [reply_for("hello")]
    if reply_for("hello") not in result.stdout:
        print("note: `opencode run --attach` exited before printing the reply (known race)")


@pytest.mark.opencode
def test_opencode_run_standalone_prints_the_fake_reply(fake_model: FakeModelServer, tmp_path: Path) -> None:
    """Without --attach, `opencode run` waits for the session to go idle, so stdout has the reply."""
    env = isolated_env(
        tmp_path / "root", {"OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(fake_model.base_url))}
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_cli([find_opencode_bin(), "run", "--model", "fake/fake-model", "hello"], env, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert reply_for("hello") in result.stdout


@pytest.mark.opencode
def test_session_http_api_gets_the_fake_reply(opencode: OpencodeHandle, fake_model: FakeModelServer) -> None:
    with opencode.client(timeout=60) as client:
        session = client.post("/session", json={}).json()
        assert session["id"].startswith("ses")

        # POST /session/{id}/message answers once the assistant turn is complete.
        r = client.post(
            f"/session/{session['id']}/message", json={"parts": [{"type": "text", "text": "ping via api"}]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["info"]["role"] == "assistant"
        assert [p["text"] for p in r.json()["parts"] if p["type"] == "text"] == [reply_for("ping via api")]

        # prompt_async returns 204 at once; a slow reply keeps the session busy meanwhile.
        r = client.post(
            f"/session/{session['id']}/prompt_async",
            json={"parts": [{"type": "text", "text": "take your time [slow:2]"}]},
        )
        assert r.status_code == 204, r.text
        saw_busy = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = client.get("/session/status").json()
            if status.get(session["id"], {}).get("type") == "busy":
                saw_busy = True
            elif saw_busy:
                break  # idle sessions are simply absent from /session/status
            time.sleep(0.1)
        assert saw_busy

        messages = client.get(f"/session/{session['id']}/message").json()
        assert _assistant_texts(messages) == [reply_for("ping via api"), reply_for("take your time [slow:2]")]
        # The title came from the fake model too.
        assert client.get(f"/session/{session['id']}").json()["title"] == title_for("ping via api")


def test_a_bash_marker_asks_for_one_tool_call_then_replies() -> None:
    with FakeModelServer() as fm:
        prompt = "please [bash:echo hi there] now"
        _, payloads = _stream_chat(fm, prompt)
        first = json.loads(payloads[0])["choices"][0]["delta"]
        [call] = first["tool_calls"]
        assert call["function"]["name"] == "bash"
        assert json.loads(call["function"]["arguments"])["command"] == "echo hi there"
        assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "tool_calls"
        # With the tool's result in the conversation, the model answers in words.
        body = {"model": "fake-model", "stream": True, "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "tool_calls": [{"id": call["id"], "type": "function",
                                                  "function": call["function"]}]},
            {"role": "tool", "tool_call_id": call["id"], "content": "hi there"}]}
        with httpx.stream("POST", f"{fm.base_url}/chat/completions", json=body,
                          timeout=30) as response:
            text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                           for line in response.iter_lines()
                           if line.startswith("data: ") and line != "data: [DONE]")
        assert text == reply_for(prompt)
