"""Notices and their channels: the three webhook formats, the UI link, delivery that
retries and never holds anything up, SNS on moto, and `ocedge notify test`."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from container.agent_secrets import open_agent_secrets
from infra.aws.client import Boto3Api
from infra.backends import backends_for_tools
from infra.notify import (
    FAILED,
    FINISHED,
    WAITING,
    Notice,
    Notifier,
    SnsTopic,
    Webhook,
    configured_channels,
    deliver,
    session_link,
    ui_base,
)
from infra.settings import Settings, SettingsError
from tests.support.aws import REGION, aws_credentials
from tests.support.cli import ocedge
from tests.support.webhook import WebhookReceiver, webhook_receiver

__all__ = ["aws_credentials"]  # fixture

LINK = "http://127.0.0.1:8787/L3dz/session/ses_1"


def _notice(kind: str = FINISHED, title: str = "Fix the parser", **extra: object) -> Notice:
    return Notice(kind, "ses_1", title, LINK, detail="The run took 2 min.", at=0.0,
                  **extra)  # type: ignore[arg-type]


# -- what a notice says ------------------------------------------------------------------


@pytest.mark.unit
def test_the_json_payload_has_the_documented_fields() -> None:
    body = Webhook("http://x", "json").request(_notice(WAITING, awake_for=1200.0))["json"]
    assert body == {
        "version": 1, "event": "session.waiting",
        "summary": "opencode needs your answer: Fix the parser",
        "detail": "The run took 2 min.", "awake_for": 1200.0,
        "session": {"id": "ses_1", "title": "Fix the parser", "url": LINK},
        "time": "1970-01-01T00:00:00Z"}


@pytest.mark.unit
def test_ntfy_gets_the_text_with_a_title_a_click_link_and_a_priority() -> None:
    request = Webhook("http://x", "ntfy").request(_notice(WAITING, awake_for=1200.0))
    text = request["content"].decode()
    assert text.splitlines()[0] == "opencode needs your answer: Fix the parser"
    assert "at least 20 min" in text and text.endswith(LINK)
    assert request["headers"] == {"Title": "opencode needs your answer: Fix the parser",
                                  "Click": LINK, "Tags": "question", "Priority": "high"}
    # A title that is not ASCII travels RFC 2047-encoded, which ntfy decodes.
    title = Webhook("http://x", "ntfy").request(_notice(title="Réparer ✓"))["headers"]["Title"]
    assert title.startswith("=?UTF-8?B?") and base64.b64decode(
        title[10:-2]).decode() == "opencode finished: Réparer ✓"


@pytest.mark.unit
def test_slack_links_the_escaped_title() -> None:
    body = Webhook("http://x", "slack").request(_notice(FAILED, title="a <b> & c"))["json"]
    assert body["text"].splitlines() == [
        f"opencode stopped with an error: <{LINK}|a &lt;b&gt; &amp; c>", "The run took 2 min."]


@pytest.mark.unit
def test_a_session_link_is_the_ui_route_of_its_directory() -> None:
    # The opencode app's route is /<base64url(directory), unpadded>/session/<id>.
    directory = "/srv/wörk space/proj>?"
    link = session_link("https://edge.example.com/", directory, "ses_abc")
    prefix, encoded, word, session = link.rsplit("/", 3)
    assert (prefix, word, session) == ("https://edge.example.com", "session", "ses_abc")
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() == directory


@pytest.mark.unit
def test_the_ui_base_is_the_public_url_else_the_local_edge() -> None:
    assert ui_base(Settings(public_url="https://edge.example.com/")) == "https://edge.example.com"
    assert ui_base(Settings(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000"
    # On AWS the container cannot know the edge's address unless told (PublicUrl): no
    # link then, rather than a wrong one.
    assert ui_base(Settings(backend="aws")) is None
    linkless = Notice(WAITING, "ses_1", "Fix", None, at=0.0)
    assert Webhook("http://x", "slack").request(linkless)["json"] == {
        "text": "opencode needs your answer: Fix"}
    assert "Click" not in Webhook("http://x", "ntfy").request(linkless)["headers"]
    assert linkless.payload()["session"]["url"] is None


@pytest.mark.unit
@pytest.mark.parametrize("env", [
    {"OCEDGE_NOTIFY_URL": "ftp://host/secret-token"}, {"OCEDGE_NOTIFY_URL": "hooks.slack.com"},
    {"OCEDGE_NOTIFY_FORMAT": "xml"}, {"OCEDGE_NOTIFY_MIN_RUN": "-1"},
    {"OCEDGE_PERMISSION_HOLD": "-2"}, {"OCEDGE_GIT_TOKEN_HOSTS": "github.example.com"}])
def test_unusable_notice_settings_are_refused_without_quoting_the_url(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert "secret-token" not in str(refused.value)


# -- delivery ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> WebhookReceiver:
    with webhook_receiver() as server:
        yield server  # type: ignore[misc]


def test_a_webhook_gets_the_notice_and_its_url_is_never_logged(
        receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert asyncio.run(deliver(Webhook(receiver.url, "json"), _notice()))
    [got] = receiver.notices()
    assert got.path == f"/hooks/{receiver.TOKEN}"
    assert got.headers["content-type"] == "application/json"
    assert got.json()["session"]["title"] == "Fix the parser"
    receiver.status = 503
    assert not asyncio.run(deliver(Webhook(receiver.url, "json"), _notice(), backoff=(0.01,)))
    assert "delivered by webhook" in caplog.text and "HTTP 503" in caplog.text
    assert receiver.TOKEN not in caplog.text


def test_a_failing_webhook_is_tried_again_with_pauses_then_dropped(
        receiver: WebhookReceiver) -> None:
    receiver.status = 500
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    assert not asyncio.run(deliver(Webhook(receiver.url), _notice(), (1.0, 4.0, 15.0), pause))
    assert len(receiver.notices()) == 4 and pauses == [1.0, 4.0, 15.0]
    # A refusal that no retry can change (a wrong URL: 404) is not tried again.
    receiver.clear()
    receiver.status = 404
    assert not asyncio.run(deliver(Webhook(receiver.url), _notice(), (1.0,), pause))
    assert len(receiver.notices()) == 1


def test_sending_never_waits_and_closing_drops_what_is_pending(
        receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.hang = 5.0  # a webhook that takes its time

    async def scenario() -> tuple[float, float]:
        notifier = Notifier([Webhook(receiver.url, timeout=30)])
        began = time.monotonic()
        notifier.send(_notice())
        sent = time.monotonic() - began
        while not receiver.notices():  # the delivery is under way
            await asyncio.sleep(0.02)
        began = time.monotonic()
        await notifier.close()
        return sent, time.monotonic() - began

    sent, closed = asyncio.run(scenario())
    assert sent < 0.05 and closed < 0.5
    assert "dropped" in caplog.text


@pytest.mark.unit
def test_an_sns_topic_gets_the_text_with_an_ascii_subject(aws_credentials: None) -> None:
    with mock_aws():
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        topic = sns.create_topic(Name="ocedge-notices")["TopicArn"]
        queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        sns.subscribe(TopicArn=topic, Protocol="sqs",
                      Endpoint=arn["Attributes"]["QueueArn"])
        channel = SnsTopic(Boto3Api(REGION, None), topic)
        assert asyncio.run(deliver(channel, _notice(title="Réparer\nle parser")))
        [message] = sqs.receive_message(QueueUrl=queue)["Messages"]
        body = json.loads(message["Body"])
        assert body["Subject"] == "opencode finished: R?parer?le parser"
        assert body["Message"].endswith(LINK) and "The run took 2 min." in body["Message"]


# -- ocedge notify test ------------------------------------------------------------------


def test_ocedge_notify_test_sends_a_sample_through_the_webhook(
        receiver: WebhookReceiver, tmp_path: Path) -> None:
    env = {"OCEDGE_STATE_DIR": str(tmp_path), "OCEDGE_NOTIFY_URL": receiver.url,
           "OCEDGE_NOTIFY_FORMAT": "slack"}
    done = ocedge("notify", "test", env=env)
    assert done.returncode == 0, done.stderr
    assert "webhook (slack)" in done.stdout
    [got] = receiver.notices()
    assert got.json()["text"].startswith("opencode finished: <http://127.0.0.1:8787/")
    receiver.status = 500
    failed = ocedge("notify", "test", env=env)
    assert failed.returncode == 2 and "not delivered by webhook" in failed.stderr
    assert receiver.TOKEN not in failed.stdout + failed.stderr
    bare = ocedge("notify", "test", env={"OCEDGE_STATE_DIR": str(tmp_path)})
    assert bare.returncode == 2 and "no notification channel is configured" in bare.stderr


def test_a_stored_webhook_is_sealed_hidden_from_the_agent_and_used(
        receiver: WebhookReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`ocedge notify set-webhook`: for a deployment whose environment is not yours."""
    env = {"OCEDGE_STATE_DIR": str(tmp_path)}
    stored = ocedge("notify", "set-webhook", "--format", "ntfy", stdin=receiver.url + "\n",
                    env=env)
    assert stored.returncode == 0, stored.stderr
    assert receiver.TOKEN not in stored.stdout + stored.stderr
    assert receiver.TOKEN.encode() not in (tmp_path / "ocedge.db").read_bytes()
    # Not an agent secret: neither listed as one nor handed to opencode.
    assert json.loads(ocedge("secret", "list", "--json", env=env).stdout) == []
    backends = backends_for_tools(Settings(state_dir=tmp_path))
    assert asyncio.run(open_agent_secrets(backends)) == {}
    assert "left out" not in caplog.text  # skipped as the container's own, not refused
    [channel] = asyncio.run(configured_channels(Settings(state_dir=tmp_path), backends))
    assert isinstance(channel, Webhook) and channel.format == "ntfy"
    # The environment's setting wins over the stored one.
    assert asyncio.run(configured_channels(
        Settings(state_dir=tmp_path, notify_url="https://other.example/x"), backends)) \
        [0].url == "https://other.example/x"  # type: ignore[attr-defined]
    sent = ocedge("notify", "test", env=env)
    assert sent.returncode == 0, sent.stderr
    assert "webhook (ntfy)" in sent.stdout and receiver.TOKEN not in sent.stdout
    [got] = receiver.notices()
    assert got.headers["title"] == "opencode finished: Test notice from ocedge notify test"
    bad = ocedge("notify", "set-webhook", stdin="ftp://host/secret-token\n", env=env)
    assert bad.returncode == 2 and "secret-token" not in bad.stderr
    assert ocedge("notify", "remove-webhook", env=env).returncode == 0
    assert ocedge("notify", "remove-webhook", env=env).returncode == 2
    assert ocedge("secret", "remove", "OCEDGE_NOTIFY_WEBHOOK", env=env).returncode == 2
