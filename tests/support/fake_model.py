"""A fake OpenAI-compatible model server, so tests can drive the real opencode with no internet.

opencode talks to it through its bundled `@ai-sdk/openai-compatible` provider (see
`opencode_config`). Replies are deterministic so tests can assert on them:

- a normal prompt gets `FAKE-REPLY: <first 40 chars of the last user message>`;
- a prompt containing `[slow:SECONDS]` streams that same reply one character at a time,
  spread evenly over SECONDS, so a test can keep a session busy;
- opencode's title-generation request (system prompt "You are a title generator...")
  gets a one-line `FAKE-TITLE: <first 30 chars>`;
- a prompt containing `[bash:COMMAND]` is answered with a call of opencode's `bash`
  tool running COMMAND (up to the closing `]`); once the tool's result is in the
  conversation the model replies as to a normal prompt.

Every request is recorded (method, path, headers, JSON body) and served back by
`GET /_fake/requests`; `DELETE /_fake/requests` clears the record.

Usage from pytest::

    with FakeModelServer() as fm:
        env["OPENCODE_CONFIG_CONTENT"] = json.dumps(opencode_config(fm.base_url))
        ...
        assert fm.requests()[-1]["headers"]["authorization"] == "Bearer fake-key"

or standalone: `python -m tests.support.fake_model --port 8123`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL_ID = "fake-model"
PROVIDER_ID = "fake"
REPLY_PREFIX = "FAKE-REPLY: "
TITLE_PREFIX = "FAKE-TITLE: "
SLOW_MARKER = re.compile(r"\[slow:(\d+(?:\.\d+)?)\]")
BASH_MARKER = re.compile(r"\[bash:([^\]]+)\]")
# opencode's title agent prompt (packages/opencode/src/agent/prompt/title.txt).
TITLE_SYSTEM_HINT = "title generator"
TITLE_USER_HINT = "Generate a title for this conversation"

JSONDict = dict[str, Any]


def reply_for(prompt: str) -> str:
    """The reply the fake model gives to a user prompt (tests assert on this)."""
    return REPLY_PREFIX + prompt.strip()[:40]


def title_for(prompt: str) -> str:
    """The title the fake model gives a conversation whose first prompt is `prompt`."""
    return TITLE_PREFIX + " ".join(prompt.split())[:30]


def _content_text(content: Any) -> str:
    """Text of a chat message's content: a plain string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _is_title_request(messages: list[JSONDict]) -> bool:
    for message in messages:
        text = _content_text(message.get("content"))
        role = message.get("role")
        if role == "system" and TITLE_SYSTEM_HINT in text:
            return True
        if role == "user" and text.lstrip().startswith(TITLE_USER_HINT):
            return True
    return False


def plan_tool_call(body: JSONDict) -> JSONDict | None:
    """The tool call the model makes for this request, if any: a ``[bash:COMMAND]``
    prompt gets one bash call, until a tool result follows it."""
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    if not messages or messages[-1].get("role") != "user" or _is_title_request(messages):
        return None
    marker = BASH_MARKER.search(_content_text(messages[-1].get("content")))
    if marker is None:
        return None
    return {"name": "bash", "arguments": json.dumps(
        {"command": marker.group(1), "description": "Run the requested command"})}


def plan_reply(body: JSONDict) -> tuple[str, float]:
    """The reply text for a chat completion request and how many seconds to spread it over."""
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    user_texts = [_content_text(m.get("content")) for m in messages if m.get("role") == "user"]
    # The title request puts the fixed instruction first and the conversation after it,
    # so the last user text is the user's actual prompt in both cases.
    prompt = next((t for t in reversed(user_texts) if t.strip()), "")
    if _is_title_request(messages):
        return title_for(prompt), 0.0
    slow = SLOW_MARKER.search(prompt)
    return reply_for(prompt), float(slow.group(1)) if slow else 0.0


class _Recorder:
    """Thread-safe request log: the server runs in another thread than the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[JSONDict] = []

    def add(self, item: JSONDict) -> None:
        with self._lock:
            self._items.append(item)

    def all(self) -> list[JSONDict]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _chunk(completion_id: str, created: int, delta: JSONDict, finish_reason: str | None = None) -> JSONDict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _sse(payload: JSONDict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(body: JSONDict, text: str) -> JSONDict:
    # Rough but non-zero token counts: opencode shows cost/tokens from these.
    prompt_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
    completion_tokens = max(1, len(text) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _stream_tool_call(body: JSONDict, call: JSONDict) -> AsyncIterator[str]:
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    created = int(time.time())
    yield _sse(_chunk(completion_id, created, {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
         "function": {"name": call["name"], "arguments": call["arguments"]}}]}))
    yield _sse(_chunk(completion_id, created, {}, "tool_calls") | {"usage": _usage(body, "")})
    yield "data: [DONE]\n\n"


async def _stream(body: JSONDict, text: str, seconds: float) -> AsyncIterator[str]:
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    created = int(time.time())
    yield _sse(_chunk(completion_id, created, {"role": "assistant", "content": ""}))
    # Slow replies go one character per chunk so the session stays busy for the whole span;
    # fast ones go in a few word-sized chunks to still exercise incremental rendering.
    pieces = list(text) if seconds > 0 else re.findall(r"\S+\s*|\s+", text)
    delay = seconds / max(1, len(pieces))
    for piece in pieces:
        if delay:
            await asyncio.sleep(delay)
        yield _sse(_chunk(completion_id, created, {"content": piece}))
    # Usage rides on the final chunk: opencode asks for it (stream_options.include_usage).
    yield _sse(_chunk(completion_id, created, {}, "stop") | {"usage": _usage(body, text)})
    yield "data: [DONE]\n\n"


def create_app(recorder: _Recorder | None = None) -> Starlette:
    """The fake server's ASGI app; `recorder` receives every model request."""
    log = recorder if recorder is not None else _Recorder()

    async def record(request: Request) -> JSONDict:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        item: JSONDict = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "body": body,
            "time": time.time(),
        }
        log.add(item)
        return item

    async def chat_completions(request: Request) -> Response:
        item = await record(request)
        body = item["body"]
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "body must be a JSON object"}}, status_code=400)
        call = plan_tool_call(body)
        if call is not None and body.get("stream"):
            return StreamingResponse(_stream_tool_call(body, call), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text, seconds = plan_reply(body)
        if body.get("stream"):
            return StreamingResponse(
                _stream(body, text, seconds),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        if seconds:
            await asyncio.sleep(seconds)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL_ID,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(body, text),
            }
        )

    async def models(request: Request) -> Response:
        await record(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def requests_log(request: Request) -> Response:
        if request.method == "DELETE":
            log.clear()
            return Response(status_code=204)
        return JSONResponse(log.all())

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_fake/requests", requests_log, methods=["GET", "DELETE"]),
        ]
    )


class FakeModelServer:
    """Runs the fake model with uvicorn in a daemon thread on a free 127.0.0.1 port.

    The socket is bound before the thread starts, so `base_url` is valid (and the port
    cannot be taken by someone else) as soon as the constructor returns.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._recorder = _Recorder()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(self._recorder),
            log_level="warning",
            lifespan="off",
            # A slow stream still open at stop() must not hold the test up.
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (ends in /v1), as the provider's `options.baseURL`."""
        return f"{self.root_url}/v1"

    def start(self) -> FakeModelServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="fake-model", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake model server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._socket.close()

    def requests(self) -> list[JSONDict]:
        """Every request recorded so far (oldest first)."""
        return self._recorder.all()

    def chat_requests(self) -> list[JSONDict]:
        """Only the chat completion requests."""
        return [r for r in self.requests() if r["path"].endswith("/chat/completions")]

    def clear(self) -> None:
        self._recorder.clear()

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def opencode_config(base_url: str, api_key: str | None = "fake-key") -> JSONDict:
    """An opencode config (for OPENCODE_CONFIG_CONTENT) whose only model is the fake one.

    With `api_key=None` the config carries no key, so opencode uses whatever was stored with
    `PUT /auth/fake` (a key in the config wins over a stored one).
    """
    options = {"baseURL": base_url} | ({"apiKey": api_key} if api_key is not None else {})
    return {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": f"{PROVIDER_ID}/{MODEL_ID}",
        # Title generation uses the small model; pin it so opencode never looks elsewhere.
        "small_model": f"{PROVIDER_ID}/{MODEL_ID}",
        # Only our provider: nothing else is looked up or offered in the UI.
        "enabled_providers": [PROVIDER_ID],
        "provider": {
            PROVIDER_ID: {
                # Bundled in the opencode binary (no npm install at runtime).
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake",
                "options": options,
                "models": {
                    MODEL_ID: {
                        "name": "Fake Model",
                        "tool_call": True,
                        "limit": {"context": 128000, "output": 4096},
                    }
                },
            }
        },
        # "allow" expands to {"*": "allow"}: no permission prompt can block a test.
        "permission": "allow",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible model server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args(argv)
    print(f"fake model at http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
