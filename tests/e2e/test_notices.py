"""Notices from the real container: the real opencode, the fake model, an edge, and a
webhook receiver standing in for ntfy or Slack.

Two deployments: ``notify`` (a working webhook, a 4 s minimum run, the idle timeout long
enough never to interfere) and ``brief`` (a 4 s idle timeout, for what happens around
sleep). In both, opencode asks before running a bash command, and the fake model asks
to run one for a ``[bash:…]`` prompt. Prompts and reads go straight to the registered
opencode (as the edge would forward them) so that polling never counts as activity.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.net import free_port
from tests.support.browser import BrowserPages, launch_chromium
from tests.support.edge import EdgeServer, make_settings
from tests.support.fake_model import FakeModelServer, opencode_config, reply_for
from tests.support.lifecycle import container_log, ensure_asleep, state, wait_for_status
from tests.support.webhook import WebhookReceiver, webhook_receiver

pytestmark = pytest.mark.opencode

MIN_RUN = 4.0
BRIEF_IDLE = 4.0


def _deployment(tmp_path: Path, fake_model: FakeModelServer, receiver: WebhookReceiver,
                **overrides: Any) -> Iterator[EdgeServer]:
    config = opencode_config(fake_model.base_url) | {"permission": {"bash": "ask"}}
    port = free_port()
    settings = make_settings(tmp_path, model_url=fake_model.base_url, port=port,
                             notify_url=receiver.url, **overrides)
    settings = settings.with_overrides(opencode_env={
        **settings.opencode_env, "OPENCODE_CONFIG_CONTENT": json.dumps(config)})
    edge = EdgeServer(settings, port=port).start()
    try:
        yield edge
    finally:
        edge.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as server:
        yield server


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
           fake_model: FakeModelServer, receiver: WebhookReceiver) -> Iterator[EdgeServer]:
    yield from _deployment(tmp_path_factory.mktemp("notify"), fake_model, receiver,
                           notify_min_run=MIN_RUN, idle_timeout=600.0)


@pytest.fixture(scope="module")
def brief(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
          fake_model: FakeModelServer, receiver: WebhookReceiver) -> Iterator[EdgeServer]:
    yield from _deployment(tmp_path_factory.mktemp("brief"), fake_model, receiver,
                           notify_min_run=1.0, idle_timeout=BRIEF_IDLE, permission_hold=2.0)


@pytest.fixture(autouse=True)
def fresh_receiver(receiver: WebhookReceiver) -> None:
    receiver.clear()
    receiver.status, receiver.hang = 200, 0.0


def opencode(edge: EdgeServer) -> httpx.Client:
    """Wake the container through the edge (a program's POST is activity), then talk to
    its opencode directly."""
    key = edge.create_key("notices")
    with httpx.Client(base_url=edge.url, timeout=60, trust_env=False,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        deadline = time.monotonic() + 90
        while client.post("/session", json={"title": "wake"}).status_code != 200:
            assert time.monotonic() < deadline, "the container did not wake"
            time.sleep(0.5)
    current = wait_for_status(edge, "running")
    return httpx.Client(base_url=f"http://{current.endpoint}", timeout=60, trust_env=False,
                        auth=("opencode", current.credential or ""))


def prompt(client: httpx.Client, text: str, title: str | None = None) -> str:
    """A new session (titled by the model from ``text`` unless ``title`` is given),
    prompted with ``text``."""
    session = str(client.post("/session", json={"title": title} if title else {}).json()["id"])
    response = client.post(f"/session/{session}/prompt_async",
                           json={"parts": [{"type": "text", "text": text}]})
    assert response.status_code == 204, response.text
    return session


def wait_busy_then_idle(client: httpx.Client, session: str, timeout: float = 60) -> float:
    """When the session's run ended: not busy, and its last message a completed reply."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if session not in client.get("/session/status").json():
            messages = client.get(f"/session/{session}/message").json()
            last = messages[-1]["info"] if messages else {}
            if last.get("role") == "assistant" and last.get("time", {}).get("completed"):
                return time.time()
        time.sleep(0.05)
    raise AssertionError(f"the run of {session} did not end within {timeout:.0f} s")


def wait_asked(client: httpx.Client, session: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for question in client.get("/permission").json():
            if question["sessionID"] == session:
                return dict(question)
        time.sleep(0.05)
    raise AssertionError("opencode never asked for a permission")


def decoded_directory(link: str) -> str:
    encoded = link.split("/")[-3]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def test_a_long_run_sends_one_notice_with_its_title_and_a_link_that_opens_it(
        notify: EdgeServer, receiver: WebhookReceiver, tmp_path: Path) -> None:
    client = opencode(notify)
    text = "[slow:6] summarise the repository"
    session = prompt(client, text)
    ended = wait_busy_then_idle(client, session)
    notices = receiver.wait_for(1, timeout=5.0)
    assert notices, f"no notice within 5 s of the run's end:\n{container_log(notify)[-3000:]}"
    arrived = notices[0].at - ended
    assert arrived <= 5.0
    time.sleep(2)  # nothing more comes for the same run
    [notice] = receiver.notices()
    body = notice.json()
    title = client.get(f"/session/{session}").json()["title"]
    assert body["event"] == "session.finished" and body["session"]["id"] == session
    assert body["session"]["title"] == title and title in body["summary"]
    link = body["session"]["url"]
    assert link.startswith(f"{notify.url}/") and link.endswith(f"/session/{session}")
    assert decoded_directory(link) == str(notify.settings.workspace_path.resolve())
    # Never the conversation: the prompt and the reply are not in the notice.
    assert "summarise" not in body["detail"] and reply_for(text) not in notice.body.decode()

    # The link opens that very session in the UI of a browser that logs in.
    with launch_chromium() as browser, BrowserPages(browser, tmp_path) as pages:
        page = pages.new_page(notify.url)
        page.goto(link)
        page.get_by_text(reply_for(text)).first.wait_for(timeout=60_000)
        # (the UI may rewrite the address to its per-server form; the session stays)
        assert page.url.startswith(notify.url) and page.url.endswith(f"/session/{session}")


def test_a_short_run_sends_nothing(notify: EdgeServer, receiver: WebhookReceiver) -> None:
    client = opencode(notify)
    session = prompt(client, "a quick question")
    wait_busy_then_idle(client, session)
    time.sleep(MIN_RUN + 2)
    assert receiver.notices() == []


def test_a_permission_question_sends_one_notice_that_says_it_keeps_the_workspace_awake(
        notify: EdgeServer, receiver: WebhookReceiver) -> None:
    client = opencode(notify)
    # Titled by the user: a title the model made from the prompt would quote the command.
    session = prompt(client, "[bash:echo notice-probe]", title="Release the library")
    question = wait_asked(client, session)
    notices = receiver.wait_for(1, timeout=10)
    assert [n.json()["event"] for n in notices] == ["session.waiting"]
    body = notices[0].json()
    assert body["session"] == {"id": session, "title": "Release the library",
                               "url": body["session"]["url"]}
    assert body["detail"] == "Permission asked to use bash."
    assert body["awake_for"] == 600.0  # the default hold: one idle period (600 s here)
    assert "notice-probe" not in notices[0].body.decode()  # never the command
    reply = client.post(f"/permission/{question['id']}/reply", json={"reply": "once"})
    assert reply.status_code == 200
    wait_busy_then_idle(client, session)
    time.sleep(1)
    assert [n.json()["event"] for n in receiver.notices()].count("session.waiting") == 1


def _asleep_after(edge: EdgeServer, since: float, timeout: float) -> float:
    asleep = wait_for_status(edge, "stopped", timeout=timeout)
    assert asleep.reason is None
    return time.time() - since


def test_a_webhook_that_never_answers_does_not_delay_sleep(
        brief: EdgeServer, receiver: WebhookReceiver) -> None:
    ensure_asleep(brief)
    receiver.hang = 120.0  # each try waits out its 10 s timeout; four tries, with pauses
    client = opencode(brief)
    session = prompt(client, "[slow:2] a job worth a notice")
    ended = wait_busy_then_idle(client, session)
    assert receiver.wait_for(1, timeout=5), "the notice was never attempted"
    # Asleep one idle period after the run, plus the stop itself: not 60 s of retries.
    took = _asleep_after(brief, ended, timeout=BRIEF_IDLE + 30)
    assert took < BRIEF_IDLE + 12, container_log(brief)[-3000:]
    assert "were still pending at shutdown: dropped" in container_log(brief)
    assert receiver.TOKEN not in container_log(brief)


def test_an_open_question_keeps_the_workspace_awake_for_its_hold_then_it_sleeps(
        brief: EdgeServer, receiver: WebhookReceiver) -> None:
    ensure_asleep(brief)
    client = opencode(brief)
    session = prompt(client, "[bash:echo hold-probe]")
    wait_asked(client, session)
    asked = time.time()
    [notice] = receiver.wait_for(1, timeout=10)
    assert notice.json()["awake_for"] == 2 * BRIEF_IDLE
    # opencode keeps the session busy while it waits; without a hold that is forever.
    time.sleep(2 * BRIEF_IDLE - 1.5)
    assert state(brief).status == "running", "asleep before the hold ran out"
    took = _asleep_after(brief, asked, timeout=30)
    assert took < 2 * BRIEF_IDLE + 12, container_log(brief)[-3000:]
